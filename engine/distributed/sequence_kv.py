"""Sequence sharding's store and attention: each shard keeps the blocks dealt to it, and attends
the step's queries over its own keys; the partials are merged by log-sum-exp.

The block manager (round_robin_blocks.py, on rank 0) deals request r's block j to shard
(r + j) % N; tables hold global block ids, shard * blocks_per_shard + local block, so one table
says which shard holds a position and where in that shard's pool.
"""

from __future__ import annotations

import torch

from ..batch_builder import RaggedBatch
from ..kv.paged_store import PagedKVStore
from .comm import Comm
from .split_attention import merge_partials, partial_attention


class SequenceShardStore(PagedKVStore):
    """Shard `rank`'s pool (blocks_per_shard blocks, every head). The step's tables are global; this
    shard writes and reads only the positions whose block it holds."""

    def __init__(self, num_layers, num_kv_heads, head_dim, dtype, device, blocks_per_shard: int, block_size: int,
                 max_context: int, rank: int, shards: int):
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, device, blocks_per_shard, block_size,
                         max_context)
        self.rank, self.shards, self.blocks_per_shard = rank, shards, blocks_per_shard

    def _local(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(which of the global slots are this shard's, their slots in its pool)."""
        span = self.blocks_per_shard * self.block_size
        mine = torch.div(slots, span, rounding_mode="floor") == self.rank
        return mine, slots - self.rank * span

    def begin_step(self, request_ids: list[int], batch: RaggedBatch) -> None:
        super().begin_step(request_ids, batch)  # step_tables, and every token's global slot
        mine, local = self._local(self.step_write_slots)
        self.write_rows = mine.nonzero().flatten()
        self.write_local = local[self.write_rows]
        self._local_keys: tuple | None = None

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.write_at(layer, self.write_local, k.index_select(0, self.write_rows), v.index_select(0, self.write_rows))

    def local_keys(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """This shard's keys of the step, item after item: (pool slots, positions, count per item)."""
        if self._local_keys is None:
            batch = self.step_batch
            slots = self._slots(self.step_tables, batch.key_seq_ids, batch.key_positions)
            mine, local = self._local(slots)
            counts = torch.zeros(len(batch.k_lens), dtype=torch.long, device=slots.device)
            counts.index_add_(0, batch.key_seq_ids[mine], torch.ones_like(batch.key_seq_ids[mine]))
            self._local_keys = (local[mine], batch.key_positions[mine], counts.tolist())
        return self._local_keys


class SplitKVAttention:
    """A layer's attention on one shard: its partial over its own keys, all-gathered, merged by lse.

    Every shard runs the whole model on the step's tokens (the queries go to every shard; only the
    KV is split), so every shard merges the gathered partials the same way: rank 0's merge feeds the
    tokens it samples, the others' feed their next layer. One all-gather per layer instead of a
    gather to rank 0 and a broadcast back."""

    def __init__(self, comm: Comm):
        self.comm = comm

    def __call__(self, q: torch.Tensor, cache: SequenceShardStore, layer: int, batch: RaggedBatch) -> torch.Tensor:
        slots, key_pos, counts = cache.local_keys()
        k, v = cache.k_pool[layer].index_select(0, slots), cache.v_pool[layer].index_select(0, slots)
        t, heads, d = q.shape
        partial = q.new_empty(t, heads, d + 1)  # output and lse side by side: one collective
        q0 = k0 = 0
        for q_len, n in zip(batch.q_lens, counts, strict=True):
            out, lse = partial_attention(q[q0:q0 + q_len], k[k0:k0 + n], v[k0:k0 + n],
                                         batch.positions[q0:q0 + q_len], key_pos[k0:k0 + n])
            partial[q0:q0 + q_len, :, :d], partial[q0:q0 + q_len, :, d] = out, lse
            q0, k0 = q0 + q_len, k0 + n
        every = self.comm.all_gather(partial)  # [shards, T, heads, d + 1]
        return merge_partials(every[..., :d], every[..., d])
