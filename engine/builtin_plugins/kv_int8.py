"""KV compression: int8 quantisation of paged KV blocks with one scale per block and KV head.

After every append, each touched block is re-quantised: its live entries are rounded to int8 with
scale = max|x| / 127 (per block, per KV head), and the dequantised values are what attention
reads. The pool keeps the engine's dtype, so the values are exactly those an int8 pool plus scales
would give back; `bytes_int8` is what such a pool needs, reported against `bytes_full`.
Outputs are not expected to stay exact: `token_divergence` counts the tokens that differ.
"""

from __future__ import annotations

import torch

from ..plugins import CachePlugin

SCALE_BYTES = 4  # one float32 scale per block and KV head


class KVInt8Plugin(CachePlugin):
    name = "kv_int8"

    def __init__(self):
        self.bytes_full = 0
        self.bytes_int8 = 0

    def check_config(self, config) -> None:
        if config.kv_layout != "paged":
            raise ValueError("plugin kv_int8 quantises paged blocks; set kv_layout = \"paged\"")

    def after_append(self, cache, layer: int, batch) -> None:
        bs = cache.block_size
        blocks, valid = [], []
        for rid, item in zip(cache.step_request_ids, batch.items):
            table = cache.allocator.tables[rid]
            for j in range(item.first_pos // bs, (item.key_len - 1) // bs + 1):
                blocks.append(table[j])
                valid.append(min(bs, item.key_len - j * bs))
        idx = torch.tensor(blocks, dtype=torch.long, device=cache.device)
        live = torch.arange(bs, device=cache.device)[None, :] < torch.tensor(valid, device=cache.device)[:, None]
        for pool in (cache.k_pool[layer], cache.v_pool[layer]):
            view = pool.view(-1, bs, *pool.shape[1:])  # [blocks, block_size, kv_heads, head_dim]
            x = view[idx] * live[:, :, None, None]  # stale slots of a block must not set its scale
            scale = x.abs().amax(dim=(1, 3), keepdim=True).clamp_min(1e-12) / 127.0
            view[idx] = (torch.round(x / scale).clamp(-127, 127) * scale).to(pool.dtype)
        if layer == cache.num_layers - 1:
            self._account(cache)

    def _account(self, cache) -> None:
        used = cache.allocator.num_blocks - cache.allocator.num_free
        elems = used * cache.block_size * cache.num_kv_heads * cache.head_dim * 2 * cache.num_layers
        self.bytes_full = elems * cache.k_pool.element_size()
        self.bytes_int8 = elems + used * cache.num_kv_heads * 2 * cache.num_layers * SCALE_BYTES

    def describe(self) -> str:
        if not self.bytes_int8:
            return "kv int8"
        return (f"kv int8 {self.bytes_full / 1024:.0f} KiB -> {self.bytes_int8 / 1024:.0f} KiB "
                f"({self.bytes_full / self.bytes_int8:.1f}x smaller)")


def token_divergence(reference: dict[int, list[int]], compressed: dict[int, list[int]]) -> int:
    """Tokens that differ between two runs of the same workload, position by position."""
    differ = 0
    for rid, ref in reference.items():
        other = compressed.get(rid, [])
        differ += sum(a != b for a, b in zip(ref, other)) + abs(len(ref) - len(other))
    return differ
