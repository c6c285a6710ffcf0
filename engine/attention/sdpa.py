"""Attention through torch's scaled_dot_product_attention, one call per scheduled item.

Per item, the mask is causal with an offset (a chunk starting at first_pos sees every cached key
before it), so only a [q_len, k_len] mask is built, never the whole batch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch_builder import RaggedBatch


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    q0 = k0 = 0
    for q_len, k_len, first in zip(batch.q_lens, batch.k_lens, batch.first_positions):
        qi = q[q0:q0 + q_len].transpose(0, 1)[None]  # [1, h, q_len, d]
        ki = k[k0:k0 + k_len].repeat_interleave(group, dim=1).transpose(0, 1)[None]
        vi = v[k0:k0 + k_len].repeat_interleave(group, dim=1).transpose(0, 1)[None]
        mask = None
        if q_len > 1:
            q_pos = torch.arange(first, first + q_len, device=q.device)
            mask = torch.arange(k_len, device=q.device)[None, :] <= q_pos[:, None]
        out[q0:q0 + q_len] = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask)[0].transpose(0, 1)
        q0 += q_len
        k0 += k_len
    return out
