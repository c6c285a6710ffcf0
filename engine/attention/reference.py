"""Reference attention: materialises the ragged causal mask, on purpose, for teaching and tests."""

from __future__ import annotations

import torch

from ..batch_builder import RaggedBatch, ragged_causal_mask

EPS = 1e-12


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """`mask` [T, K]: a narrower mask than the ragged causal one (an attention plugin's)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    mask = ragged_causal_mask(batch) if mask is None else mask  # [T, K]
    scores = torch.einsum("thd,khd->htk", q, k) * q.shape[-1] ** -0.5
    return torch.einsum("htk,khd->thd", stable_softmax(scores, mask), v)


def stable_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension where `mask` allows, safe in any float dtype.

    A large negative fill (not -inf) keeps fully masked rows finite; subtracting the row max
    before exp avoids overflow (exp of at most 0); the eps clamp guards the division, with an eps
    the dtype can hold (1e-12 is 0 in float16). `cbtui stability` shows what each guard prevents."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min / 2)
    scores = scores - scores.amax(dim=-1, keepdim=True)
    weights = torch.exp(scores) * mask
    eps = max(EPS, torch.finfo(scores.dtype).tiny)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(eps)
