"""Split-KV attention: each shard attends over its own keys, the partials merge exactly.

For one query, softmax attention over keys split into sets S_1..S_N is
    out = sum_s exp(lse_s - m) * out_s / sum_s exp(lse_s - m),   m = max_s lse_s,
where out_s is the softmax-weighted value over S_s alone and lse_s = log sum_{j in S_s} exp(score_j):
each partial is rescaled by its share of the total softmax mass. A shard with no key visible to
the query (causal mask, or none of the request's blocks) gives lse = -inf and weight 0. Every query
sees its own position, so at least one shard has a finite lse and the merge is well defined.
"""

from __future__ import annotations

import torch


def partial_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                      k_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One item: q [t, heads, d] at positions q_pos [t]; this shard's keys/values [k, kv_heads, d] at
    positions k_pos [k] (any order, any subset). Returns (out [t, heads, d], lse [t, heads]); out is 0
    and lse -inf for a query that sees none of these keys."""
    t, heads, d = q.shape
    if k.shape[0] == 0:
        return q.new_zeros(t, heads, d), q.new_full((t, heads), float("-inf"))
    group = heads // k.shape[1]
    kk, vv = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,khd->htk", q, kk) * d**-0.5
    visible = k_pos[None, :] <= q_pos[:, None]  # causal, by position in the sequence
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # [heads, t]; -inf where nothing is visible
    weights = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])  # exp(-inf) = 0
    return torch.einsum("htk,khd->thd", weights, vv), lse.transpose(0, 1)


def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """outs [shards, T, heads, d], lses [shards, T, heads] -> the exact attention output [T, heads, d]."""
    top = lses.amax(dim=0)  # finite: every query's own key is on some shard
    scale = torch.exp(lses - top)  # [shards, T, heads]; 0 for a shard that saw nothing
    return (scale[..., None] * outs).sum(dim=0) / scale.sum(dim=0)[..., None]
