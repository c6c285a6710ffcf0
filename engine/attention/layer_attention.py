"""How one layer's attention gets its keys: packed from the cache, or straight from the paged pool.

The model calls `attention(q, cache, layer, batch)` after storing this step's keys/values.
Backends (and plugin wrappers) keep the simple packed signature fn(q, k, v, batch); these
adapters decide what they are given.
"""

from __future__ import annotations

import torch

from .single import leading_singles


class PackedAttention:
    """Every item's keys read packed from the cache (any layout, any backend, any plugin)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, q, cache, layer: int, batch):
        keys, values = cache.read(layer)
        return self.fn(q, keys, values, batch)


class PoolAttention:
    """Paged cache, built-in backend: the decodes at the front of the batch read their blocks from
    the pool (paged_decode.py); only the other items' keys are read packed, for the backend.
    The decode attention plans its layout once per step (on the CPU: groups by table width)."""

    def __init__(self, fn, decode):
        self.fn, self.decode = fn, decode  # decode: attention/decode_kernel.py

    def __call__(self, q, cache, layer: int, batch):
        n = leading_singles(batch)
        parts = []
        if n:
            k_pool, v_pool = cache.k_pool[layer], cache.v_pool[layer]
            if "decode_tables" not in batch.scratch:  # once per step: the decodes' table rows, as wide as the longest
                width = cache.blocks_for(max(batch.k_lens[:n]))
                tables = batch.scratch["decode_tables"] = cache.step_tables[:n, :width]
                key_bytes = 2 * k_pool[0].numel() * k_pool.element_size()  # one position's keys and values
                batch.scratch["decode_groups"] = self.decode.plan(tables, batch.k_lens[:n], cache.block_size, key_bytes)
            parts.append(self.decode(q[:n], k_pool, v_pool, batch.scratch["decode_tables"], batch.key_lens[:n],
                                     cache.block_size, groups=batch.scratch["decode_groups"]))
        if n < len(batch.q_lens):
            keys, values = cache.read(layer, first_item=n)
            parts.append(self.fn(q[n:], keys, values, batch.tail(n)))
        return parts[0] if len(parts) == 1 else torch.cat(parts)
