"""A paged KV pool stored as int8 with one scale per block and KV head.

It stands in for the float pool tensors of PagedKVStore (`pool[layer].index_copy_(0, slots, x)`
to write, `pool[layer].index_select(0, slots)` or `pool[layer][slots]` to read), so the cache code
does not change: writes quantise, reads dequantise to the engine's dtype.

Writing into a block re-quantises the whole block: its live entries are dequantised, the new
ones put in, and the block gets a fresh scale = max|x| / 127 per KV head. A sequence fills a block
from offset 0 upward, so a write that starts at offset 0 starts the block afresh (a new owner, or
a recompute), and otherwise the live entries are those up to the highest offset written so far:
stale data of a block's previous owner never sets its scale.
"""

from __future__ import annotations

import torch

LEVELS = 127


class Int8BlockPool:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        self.block_size, self.dtype = block_size, dtype
        self.q = torch.zeros((num_layers, num_blocks, block_size, num_kv_heads, head_dim), dtype=torch.int8,
                             device=device)
        self.scale = torch.zeros((num_layers, num_blocks, num_kv_heads), dtype=torch.float32, device=device)
        # Highest offset written + 1 per block and layer: the block's live entries.
        self.fill = torch.zeros((num_layers, num_blocks), dtype=torch.long, device=device)

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scale.nbytes

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int) -> int:
        """What one block adds to `nbytes`: an int8 per element and a float32 scale per KV head."""
        return num_layers * (block_size * num_kv_heads * head_dim + 4 * num_kv_heads)

    def __getitem__(self, layer: int) -> Int8LayerPool:
        return Int8LayerPool(self, layer)


class Int8LayerPool:
    def __init__(self, pool: Int8BlockPool, layer: int):
        self.pool, self.layer = pool, layer

    @property
    def device(self) -> torch.device:
        return self.pool.q.device

    def __getitem__(self, slots: torch.Tensor) -> torch.Tensor:
        p, bs = self.pool, self.pool.block_size
        blocks, offsets = slots // bs, slots % bs
        q = p.q[self.layer][blocks, offsets].to(torch.float32)  # [n, kv_heads, head_dim]
        return (q * p.scale[self.layer][blocks][:, :, None]).to(p.dtype)

    def index_select(self, dim: int, slots: torch.Tensor) -> torch.Tensor:
        assert dim == 0
        return self[slots]

    def index_copy_(self, dim: int, slots: torch.Tensor, values: torch.Tensor) -> None:
        assert dim == 0
        p, bs = self.pool, self.pool.block_size
        blocks, offsets = slots // bs, slots % bs
        touched, where = torch.unique(blocks, return_inverse=True)
        q, scale, fill = p.q[self.layer], p.scale[self.layer], p.fill[self.layer]
        # Current contents of the touched blocks, dequantised, with the new entries put in.
        dense = q[touched].to(torch.float32) * scale[touched][:, None, :, None]
        dense[where, offsets] = values.to(torch.float32)
        written_end = torch.zeros_like(touched).scatter_reduce(0, where, offsets + 1, "amax", include_self=False)
        written_start = torch.zeros_like(touched).scatter_reduce(0, where, offsets, "amin", include_self=False)
        old_fill = torch.where(written_start == 0, torch.zeros_like(touched), fill[touched])
        new_fill = torch.maximum(old_fill, written_end)
        live = torch.arange(bs, device=slots.device)[None, :] < new_fill[:, None]  # [blocks, bs]
        dense = dense * live[:, :, None, None]
        block_scale = dense.abs().amax(dim=(1, 3)).clamp_min(1e-12) / LEVELS  # [blocks, kv_heads]
        q[touched] = torch.round(dense / block_scale[:, None, :, None]).clamp(-LEVELS, LEVELS).to(torch.int8)
        scale[touched] = block_scale
        fill[touched] = new_fill
