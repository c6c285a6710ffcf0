"""Sequence sharding's block manager: a request's blocks dealt round-robin over the shards.

Block j of request r (positions j*B .. j*B+B-1) lives on shard (r + j) % N, in a block from that
shard's own free list: round-robin, each request starting one shard further on, so that first
blocks (every request has one) do not all land on shard 0. Block ids in the tables are global,
shard * blocks_per_shard + local block, so one table says where every position is, which shard
holds it and where in that shard's pool. Only the free lists differ from the one-device block
manager; admission and preemption ask every shard for its blocks through `can_allocate`.
Pure Python, like the block manager it varies.
"""

from __future__ import annotations

from collections import deque

from .block_manager import BlockManager


class RoundRobinBlocks(BlockManager):
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

    def _take_free(self, request_id: int, needed: int) -> list[int]:
        have = len(self.tables.get(request_id, ()))
        return [self.shard_free[(request_id + j) % self.shards].popleft() for j in range(have, have + needed)]

    def _give_free(self, block: int) -> None:
        self.shard_free[self.shard_of(block)].append(block)

    @property
    def num_free(self) -> int:
        return sum(map(len, self.shard_free))
