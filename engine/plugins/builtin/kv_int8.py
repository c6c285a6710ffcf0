"""KV compression: the paged KV pool stored as int8, one scale per block and KV head.

On attach the plugin swaps the store's float pools for Int8BlockPool, so the memory is really
saved: 1 byte per element plus a float32 scale per block and head. When the pool is sized by a
memory budget (`kv_memory_bytes`), the saving buys blocks: the int8 pool gets as many as fit in the
same bytes (3.9x as many for float32), so fewer requests are preempted. Keys and values are
dequantised when attention reads them. Outputs are not expected to stay exact:
`token_divergence` counts the tokens that differ from an uncompressed run.
"""

from __future__ import annotations

from ...kv.int8_pool import Int8BlockPool
from ..base import CachePlugin


class KVInt8Plugin(CachePlugin):
    name = "kv_int8"
    changes_outputs = True  # the CLI measures the divergence from a run without it

    def __init__(self):
        self.bytes_full = 0  # the float pools it replaced
        self.bytes_int8 = 0  # what the int8 pools take
        self.blocks_full = self.blocks_int8 = 0  # pool sizes before and after (more with a memory budget)

    def check_config(self, config) -> None:
        if config.cache.kv_layout != "paged":
            raise ValueError("plugin kv_int8 quantises paged blocks; set kv_layout = \"paged\"")

    def attach(self, cache) -> None:
        self.bytes_full = cache.k_pool.nbytes + cache.v_pool.nbytes
        num_layers, _, heads, dim = cache.k_pool.shape
        self.blocks_full = blocks = cache.num_blocks
        if cache.memory_budget is not None:  # same memory, more (smaller) blocks
            blocks = cache.memory_budget // (2 * Int8BlockPool.bytes_per_block(num_layers, cache.block_size,
                                                                                heads, dim))
        self.blocks_int8 = blocks
        spare = 1 if cache.spare_block else 0
        k_pool, v_pool = (Int8BlockPool(num_layers, blocks + spare, cache.block_size, heads, dim, cache.dtype,
                                        cache.device) for _ in range(2))
        cache.replace_pools(k_pool, v_pool, blocks)
        self.bytes_int8 = cache.k_pool.nbytes + cache.v_pool.nbytes

    def describe(self) -> str:
        if self.blocks_int8 != self.blocks_full:
            return (f"kv int8 {self.blocks_full} -> {self.blocks_int8} blocks in "
                    f"{self.bytes_full / 1024:.0f} KiB of KV memory")
        return (f"kv int8 {self.bytes_full / 1024:.0f} KiB -> {self.bytes_int8 / 1024:.0f} KiB "
                f"({self.bytes_full / max(self.bytes_int8, 1):.1f}x smaller)")


def token_divergence(reference: dict[int, list[int]], compressed: dict[int, list[int]]) -> int:
    """Tokens that differ between two runs of the same workload, position by position."""
    differ = 0
    for rid, ref in reference.items():
        other = compressed.get(rid, [])
        differ += sum(a != b for a, b in zip(ref, other, strict=False)) + abs(len(ref) - len(other))
    return differ
