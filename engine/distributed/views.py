"""The shards of a step, as its record shows them: each shard's pool and memory, from the block
manager's tables (plain Python: the recorder builds them from values the runner measured)."""

from __future__ import annotations

from ..kv.block_manager import BlockManager
from ..records import IdKeyed, ShardView
from .round_robin_blocks import RoundRobinBlocks


def shard_views(blocks: BlockManager, pool_bytes: int, memory: list[tuple[str, int]]) -> list[ShardView]:
    """One view per shard. pool_bytes: one shard's pool; memory: (device, bytes in use) per shard."""
    views = []
    for rank, (device, used_bytes) in enumerate(memory):
        if isinstance(blocks, RoundRobinBlocks):  # sequence: each shard its own blocks
            per = blocks.blocks_per_shard
            free = len(blocks.shard_free[rank])
            low, high = rank * per, (rank + 1) * per
            tables = {rid: tuple(b - low for b in t if low <= b < high) for rid, t in blocks.tables.items()}
            views.append(ShardView(rank, device, per, per - free, free, pool_bytes, used_bytes, low,
                                   IdKeyed(tables)))
        else:  # heads: the same tables on every shard
            free = blocks.num_free
            views.append(ShardView(rank, device, blocks.num_blocks, blocks.num_blocks - free, free, pool_bytes,
                                   used_bytes, 0, IdKeyed(blocks.tables)))
    return views
