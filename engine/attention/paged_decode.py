"""Decode attention straight from the paged KV pool: one gather of whole blocks per layer.

The packed path reads every key of every item into a contiguous tensor, then the decode
attention pads them again: the whole history crosses memory twice per layer. Here each decode
gathers its own blocks from the pool through its block table ([n, blocks] indices into a
[num_blocks, block_size, kv_heads, d] view), padded to the longest table and masked by key
length, and one scaled_dot_product_attention serves every decode (query heads of a group stand
in the query axis, as in single.py).
"""

from __future__ import annotations

import torch

from .single import padded_decode_sdpa


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                           key_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """q [n, heads, d] (one query per item); pools [slots, kv_heads, d]; tables [n, blocks] (entries
    past an item's own blocks may be anything in range); key_lens [n]. Returns [n, heads, d]."""
    n, _, d = q.shape
    kv_heads = k_pool.shape[1]
    width = tables.shape[1] * block_size
    # index_select on the flattened table, not pool[tables]: the same blocks, about 3x quicker on
    # the CPU (whole rows copied at once rather than element by element); one kernel on CUDA either way.
    blocks = tables.reshape(-1)
    kk = k_pool.view(-1, block_size, kv_heads, d).index_select(0, blocks).view(n, width, kv_heads, d).transpose(1, 2)
    vv = v_pool.view(-1, block_size, kv_heads, d).index_select(0, blocks).view(n, width, kv_heads, d).transpose(1, 2)
    valid = torch.arange(width, device=q.device)[None, :] < key_lens[:, None]  # [n, width]
    return padded_decode_sdpa(q, kk, vv, valid)
