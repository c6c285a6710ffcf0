"""A request's KV history as the seed's PagedAllocator.flatten sees it, from a record's KVView alone:
its blocks in table order, how many tokens each holds, and the unused tail of the last block that
flatten trims. The dashboard shows it for the selected request (KV panel)."""

from __future__ import annotations

from dataclasses import dataclass

from .types import KVView


@dataclass(frozen=True, slots=True)
class FlatHistory:
    request_id: int
    blocks: tuple[int, ...]  # physical blocks in table order
    evicted: tuple[int, ...]  # indices into `blocks` a cache plugin gave back (their keys are gone)
    tokens: int  # the flattened length: tokens held
    block_size: int
    run: bool = False  # the blocks are one contiguous run reserved at admission (contiguous_up_to)

    @property
    def trimmed(self) -> int:
        """Slots of the last block past the last token: cut off by flatten."""
        return len(self.blocks) * self.block_size - self.tokens

    def describe(self, max_blocks: int = 8) -> str:
        """e.g. 'r3 flattened 7 2 9 4 → 53 tok, 11 trimmed': the blocks in order (× for an evicted
        one), the length of the flattened view, the tail slots cut off the last block."""
        if self.run and self.blocks:  # consecutive: flatten is one slice of the pool
            return (f"r{self.request_id} one run {self.blocks[0]}–{self.blocks[-1]} → {self.tokens} tok, "
                    f"{self.trimmed} reserved unwritten")
        names = ["×" if i in self.evicted else str(b) for i, b in enumerate(self.blocks)]
        if len(names) > max_blocks:
            keep = max(max_blocks - 1, 2)
            names = names[:keep // 2] + ["…"] + names[-(keep - keep // 2):]
        return (f"r{self.request_id} flattened {' '.join(names) or '(no blocks)'} → {self.tokens} tok, "
                f"{self.trimmed} trimmed")


def flat_history(kv: KVView, request_id: int) -> FlatHistory | None:
    """The request's flattened history in this record; None when it holds no blocks (or dense)."""
    key = str(request_id)
    if kv.layout != "paged" or key not in kv.block_tables:
        return None
    blocks = tuple(kv.block_tables[key])
    tokens = min(kv.tokens.get(key, 0), len(blocks) * kv.block_size)
    return FlatHistory(request_id, blocks, tuple(kv.evicted.get(key, ())), tokens, kv.block_size,
                       request_id in kv.runs)
