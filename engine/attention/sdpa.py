"""Attention through torch's scaled_dot_product_attention.

Single-query items (decodes) go through one batched call (see single.py). Every other item gets
its own call with a causal mask offset by its cached history (a chunk starting at first_pos sees
every cached key before it), so only a [q_len, k_len] mask is built, never the whole batch's.
Grouped-query heads are handled by sdpa's enable_gqa, without copying K/V per query head.
"""

from __future__ import annotations

import torch

from ..batch_builder import RaggedBatch
from .single import host_offsets, sdpa, single_items, single_query_attention


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch) -> torch.Tensor:
    out = torch.empty_like(q)
    singles = single_items(batch)
    if singles:
        rows, single_out = single_query_attention(q, k, v, batch, singles)
        out[rows] = single_out
    cu_q, cu_k = host_offsets(batch.q_lens), host_offsets(batch.k_lens)
    masks = batch.scratch.setdefault("causal_masks", {})  # built once a step, read by every layer
    for i, (q_len, k_len, first) in enumerate(zip(batch.q_lens, batch.k_lens, batch.first_positions, strict=True)):
        if q_len == 1:
            continue
        q0, k0 = cu_q[i], cu_k[i]
        qi = q[q0:q0 + q_len].transpose(0, 1)[None]  # [1, h, q_len, d]
        ki = k[k0:k0 + k_len].transpose(0, 1)[None]  # [1, kv_h, k_len, d]
        vi = v[k0:k0 + k_len].transpose(0, 1)[None]
        mask = masks.get((q_len, k_len, first))
        if mask is None:
            q_pos = torch.arange(first, first + q_len, device=q.device)
            mask = masks[(q_len, k_len, first)] = torch.arange(k_len, device=q.device)[None, :] <= q_pos[:, None]
        out[q0:q0 + q_len] = sdpa(qi, ki, vi, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1)
    return out
