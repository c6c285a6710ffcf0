"""A worker's block tables: the ones the driver chose, adopted as they come with each step's plan.

Only rank 0 allocates (its scheduler decides admission and preemption); a worker's cache takes the
tables it is sent, so its pool is laid out exactly as the driver's decisions say.
"""

from __future__ import annotations

from ..kv.cache import PagedKVCache


class MirroredPagedKV(PagedKVCache):
    """A shard's paged cache. On a worker it takes its tables from the driver's plans (adopt, forget);
    on the driver it notes the requests whose blocks were freed, for the next plan to say."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.released: list[int] = []

    def free(self, request_id: int) -> tuple[int, ...]:
        self.released.append(request_id)
        return super().free(request_id)

    def take_released(self) -> list[int]:
        out, self.released = self.released, []
        return out

    def adopt(self, request_id: int, table: tuple[int, ...]) -> None:
        """The request's table as the driver has it now (grown, or new after a preemption)."""
        row = self._row_of(request_id)
        self.allocator.tables[request_id] = table
        self._table_np[row, :len(table)] = table

    def forget(self, request_id: int) -> None:
        """The driver freed the request's blocks (finished or preempted)."""
        self.allocator.tables.pop(request_id, None)
        self.tokens.pop(request_id, None)
        if request_id in self._row:
            self._free_rows.append(self._row.pop(request_id))
