"""PagedKVStore: the runner's side of the paged cache. One pool of fixed-size blocks per layer.

The block manager (block_manager.py, the scheduler's) decides which blocks each request holds;
this store only keeps the tensors and turns tables into pool slots. It learns the tables from
each step's plan (`apply`: tables that changed, requests released) and keeps a host mirror of
them, one row per live request, so a step copies its rows in one go.

The model sees the step protocol shared with the dense store:
  begin_step(request_ids, batch)  -> where this step's keys/values go and which keys it reads
  write(layer, k, v)              -> store this step's keys/values
  rotary_write(layer, qkv, ...)   -> on the CPU, rotate queries and keys and store in one kernel
  read(layer)                     -> packed keys/values [K, kv_heads, head_dim], item after item
"""

from __future__ import annotations

import torch

from ..batch_builder import RaggedBatch, long_tensor, to_device
from ..cpu_kernels import build as build_cpu_kernels

# Where rotary_write's kernel runs faster than the five torch ops it stands for (float16 has no
# vectorized conversion in it: slower than torch's ops beyond a few rows).
ROTARY_WRITE_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class PagedKVStore:
    layout = "paged"
    step_request_ids: list[int]  # set by begin_step
    step_batch: RaggedBatch

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 num_blocks: int, block_size: int, max_context: int, spare_block: bool = False,
                 memory_budget: int | None = None):
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.memory_budget = memory_budget  # kv_memory_bytes: the pool was sized from it, not from a count
        # The teaching path: read each request's keys as `flatten` gives them (set for the reference
        # backend) rather than by one gather of pool slots. Same keys either way.
        self.read_by_flatten = False
        self.spare_block = spare_block
        self.max_table_width = -(-max_context // block_size)
        self.tables: dict[int, tuple[int, ...]] = {}  # as the plans said, request id -> blocks
        self._table = torch.zeros((64, self.max_table_width), dtype=torch.long)
        self._table_np = self._table.numpy()  # same memory; numpy writes single entries ~20x faster
        self._row: dict[int, int] = {}
        self._free_rows: list[int] = list(range(63, -1, -1))
        # With decode graphs, one spare block past the pool's: padding rows write there.
        self.scratch_slot = num_blocks * block_size if spare_block else None
        shape = (num_layers, (num_blocks + spare_block) * block_size, num_kv_heads, head_dim)
        self.k_pool = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pool = torch.zeros(shape, dtype=dtype, device=device)
        self._rotary_kernel: bool | None = None  # whether rotary_write's kernel runs here (known at first use)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    @property
    def pool_bytes(self) -> int:
        return self.k_pool.nbytes + self.v_pool.nbytes  # what the pools really take (int8 or float)

    def replace_pools(self, k_pool, v_pool, num_blocks: int) -> None:
        """New storage with room for `num_blocks` blocks (plus the spare one, if any), before anything
        is stored: a compressed pool fits more blocks in the same memory budget."""
        if self.tables:
            raise RuntimeError("the KV pool can only be replaced before any request holds blocks")
        self.num_blocks = num_blocks
        self.scratch_slot = num_blocks * self.block_size if self.spare_block else None
        self.k_pool, self.v_pool = k_pool, v_pool

    # -- tables, as the plans say -----------------------------------------------------------------
    def apply(self, released: list[int], tables: dict[int, tuple[int, ...]]) -> None:
        """Takes a plan's table changes: requests that let go of their blocks, then the tables that
        are new or changed (a request released and admitted again in one plan is new again)."""
        for rid in released:
            self.tables.pop(rid, None)
            if rid in self._row:
                self._free_rows.append(self._row.pop(rid))
        for rid, table in tables.items():
            self.tables[rid] = table
            row = self._row_of(rid)  # first: a full mirror grows here, and the row is in the new one
            self._table_np[row, :len(table)] = table

    def _row_of(self, request_id: int) -> int:
        """The request's row of the host table mirror, given one (the mirror doubles when full)."""
        if request_id not in self._row:
            if not self._free_rows:
                grown = self._table.shape[0]
                self._table = torch.cat([self._table, torch.zeros_like(self._table)])
                self._table_np = self._table.numpy()
                self._free_rows = list(range(2 * grown - 1, grown - 1, -1))
            self._row[request_id] = self._free_rows.pop()
        return self._row[request_id]

    def _slots(self, tables: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Pool slot of each (item, position): its block from the table, then the offset in it.

        A 1-D gather on flattened tables, and shifts for a power-of-two block size: 64-bit
        division and 2-D fancy indexing were most of a step's host time (measured: 1.45 ms vs
        0.26 ms for 512 requests, 26k keys, on this project's 2-core CPU).
        """
        bs, width = self.block_size, tables.shape[1]
        if bs & (bs - 1) == 0:
            shift = bs.bit_length() - 1
            block_index, offset = pos >> shift, pos & (bs - 1)
        else:
            block_index, offset = torch.div(pos, bs, rounding_mode="floor"), pos.remainder(bs)
        return (tables * bs).view(-1)[seq * width + block_index] + offset

    # -- one step ---------------------------------------------------------------------------------
    def begin_step(self, request_ids: list[int], batch: RaggedBatch) -> None:
        self.step_request_ids, self.step_batch = request_ids, batch
        tables_by_id, row_of = self.tables, self._row
        width = max(map(len, map(tables_by_id.__getitem__, request_ids)))
        rows = long_tensor(list(map(row_of.__getitem__, request_ids)), torch.device("cpu"))
        self.step_tables = to_device(self._table[rows, :width], self.device)  # [items, blocks] this step
        self.step_write_slots = self._slots(self.step_tables, batch.seq_ids, batch.positions)
        self._read_slots: dict[int, torch.Tensor] = {}  # first item -> pool slots of its keys onward

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.write_at(layer, self.step_write_slots, k, v)

    def rotary_write(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     heads: int) -> torch.Tensor | None:
        """The model's rotary positions and this step's write in one CPU kernel
        (cpu_kernels/csrc/rotary_write.cpp), bit for bit what Rotary.apply and write store: qkv
        [tokens, heads + 2 kv heads, d] as projected, cos/sin as Rotary.cos_sin gives them. Returns
        the rotated queries [tokens, heads, d], or None where the kernel cannot run (not the CPU, a
        pool a plugin replaced, a store whose write does more, as a shard's; no compiler): the model
        then rotates and calls write."""
        if self._rotary_kernel is None:
            self._rotary_kernel = (self.device.type == "cpu" and self.dtype in ROTARY_WRITE_DTYPES
                                   and type(self).write is PagedKVStore.write and build_cpu_kernels() is None)
        if not self._rotary_kernel or not isinstance(self.k_pool, torch.Tensor):
            return None
        return torch.ops.cbtui.rotary_write(qkv, cos, sin, heads, self.k_pool[layer], self.v_pool[layer],
                                            self.step_write_slots)

    def write_at(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_pool[layer].index_copy_(0, slots, k)
        self.v_pool[layer].index_copy_(0, slots, v)

    def read(self, layer: int, first_item: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed keys/values of the step's items from `first_item` on (all of them by default)."""
        if self.read_by_flatten and first_item == 0:
            return self._read_flattened(layer)
        slots = self._read_slots.get(first_item)
        if slots is None:
            batch, k0 = self.step_batch, sum(self.step_batch.k_lens[:first_item])
            slots = self._slots(self.step_tables, batch.key_seq_ids[k0:], batch.key_positions[k0:])
            self._read_slots[first_item] = slots
        return self.k_pool[layer].index_select(0, slots), self.v_pool[layer].index_select(0, slots)

    def flatten(self, layer: int, request_id: int, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's history as the seed describes paged KV for attention: its blocks concatenated
        in table order, the unused tail of the last block trimmed to `num_tokens`. The reference
        backend reads keys this way (the fast paths gather slots, or read the pool in a kernel)."""
        table = self.tables.get(request_id, ())
        offsets = torch.arange(self.block_size, device=self.device)
        blocks = torch.tensor(table, dtype=torch.long, device=self.device)
        slots = (blocks[:, None] * self.block_size + offsets[None, :]).reshape(-1)[:num_tokens]
        return self.k_pool[layer][slots], self.v_pool[layer][slots]

    def _read_flattened(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's keys/values, item after item, each request's history flattened (this step's
        keys included: they are stored before attention reads)."""
        parts = [self.flatten(layer, rid, n) for rid, n in zip(self.step_request_ids, self.step_batch.k_lens,
                                                                strict=True)]
        return torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])
