"""FlexAttention over the packed batch, with a block mask from the ragged causal rule.

Built for CUDA (compiled kernels); on the CPU torch runs it unfused, which is slow but exact,
so tests can still compare it with the other backends.
"""

from __future__ import annotations

import warnings

import torch

from ..batch_builder import RaggedBatch


def flex_available(device: torch.device) -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_compiled = {}


def _flex(device: torch.device):
    from torch.nn.attention.flex_attention import flex_attention

    if device.type != "cuda":
        return flex_attention
    if "cuda" not in _compiled:
        _compiled["cuda"] = torch.compile(flex_attention, dynamic=True)
    return _compiled["cuda"]


def flex_attention_ragged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    q_seq, q_pos = batch.seq_ids, batch.positions
    k_seq, k_pos = batch.key_seq_ids, batch.key_positions

    def ragged_causal(b, h, qi, kj):
        return (q_seq[qi] == k_seq[kj]) & (k_pos[kj] <= q_pos[qi])

    t, kn = q.shape[0], k.shape[0]
    block_mask = create_block_mask(ragged_causal, None, None, t, kn, device=q.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = _flex(q.device)(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                              block_mask=block_mask, enable_gqa=True)
    return out[0].transpose(0, 1)
