"""Sequence sharding: a request's KV blocks dealt round-robin over the shards, each with its pool.

Block j of request r (positions j*B .. j*B+B-1) lives on shard (r + j) % N, in a block from that
shard's own free list: round-robin, each request starting one shard further on, so that first
blocks (every request has one) do not all land on shard 0. Block ids in the tables are global,
shard * blocks_per_shard + local block, so one table says where every position is, which shard
holds it and where in that shard's pool; the driver's scheduler sees one allocator (admission and
preemption ask every shard for its blocks), and the records draw one pool per shard from the same
tables.
"""

from __future__ import annotations

from collections import deque

import torch

from ..batch_builder import RaggedBatch
from ..kv.cache import PagedAllocator
from .comm import Comm
from .mirror import MirroredPagedKV
from .split_attention import merge_partials, partial_attention


class RoundRobinAllocator(PagedAllocator):
    """N free lists of blocks_per_shard blocks; request r's block j comes from shard (r + j) % N."""

    def __init__(self, shards: int, blocks_per_shard: int, block_size: int):
        super().__init__(shards * blocks_per_shard, block_size)
        self.shards, self.blocks_per_shard = shards, blocks_per_shard
        self.shard_free: list[deque[int]] = [deque(range(s * blocks_per_shard, (s + 1) * blocks_per_shard))
                                             for s in range(shards)]
        self.free_blocks = deque()  # unused: the shards' lists are the free lists

    def shard_of(self, block: int) -> int:
        return block // self.blocks_per_shard

    def _new_blocks_per_shard(self, request_id: int, num_tokens: int) -> list[int]:
        have = len(self.tables.get(request_id, ()))
        counts = [0] * self.shards
        for j in range(have, have + self.blocks_needed(request_id, num_tokens)):
            counts[(request_id + j) % self.shards] += 1
        return counts

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        counts = self._new_blocks_per_shard(request_id, num_tokens)
        return all(n <= len(free) for n, free in zip(counts, self.shard_free, strict=True))

    def allocate(self, request_id: int, num_tokens: int) -> list[int]:
        if not self.can_allocate(request_id, num_tokens):
            short = [s for s, (n, free) in enumerate(zip(self._new_blocks_per_shard(request_id, num_tokens),
                                                         self.shard_free, strict=True)) if n > len(free)]
            raise MemoryError(f"request {request_id} needs more blocks than shard {short[0]} has free")
        have = len(self.tables.get(request_id, ()))
        new = [self.shard_free[(request_id + j) % self.shards].popleft()
               for j in range(have, have + self.blocks_needed(request_id, num_tokens))]
        if new:
            self.tables[request_id] = self.tables.get(request_id, ()) + tuple(new)
        return new

    def free(self, request_id: int) -> tuple[int, ...]:
        blocks = self.tables.pop(request_id, ())
        for b in blocks:
            self.shard_free[self.shard_of(b)].append(b)
        return blocks

    @property
    def num_free(self) -> int:
        return sum(map(len, self.shard_free))


class SequenceShardCache(MirroredPagedKV):
    """Shard `rank`'s pool (blocks_per_shard blocks, every head). The step's tables are global; this
    shard writes and reads only the positions whose block it holds."""

    def __init__(self, num_layers, num_kv_heads, head_dim, dtype, device, blocks_per_shard: int, block_size: int,
                 max_context: int, rank: int, shards: int):
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, device, blocks_per_shard, block_size,
                         max_context)
        self.allocator = RoundRobinAllocator(shards, blocks_per_shard, block_size)
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

    def __call__(self, q: torch.Tensor, cache: SequenceShardCache, layer: int, batch: RaggedBatch) -> torch.Tensor:
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
