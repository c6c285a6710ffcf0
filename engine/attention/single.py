"""Attention for items with one query token (decodes), all of them in one batched call.

An item with a single query at position p sees every one of its keys (key_len = p + 1), so no
causal mask is needed, only key padding. Its keys are gathered into a [n, kv_heads, max_len, d]
tensor and, for grouped-query attention, the query heads of a group stand in the query-length
axis: q [n, kv_heads, group, d] against k [n, kv_heads, max_len, d]. One
scaled_dot_product_attention call serves every decode of the step, with no K/V head expansion.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..batch_builder import RaggedBatch, long_tensor


def _no_cudnn_backends():
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa(q, k, v, **kwargs):
    """scaled_dot_product_attention without the cuDNN backend on CUDA.

    Measured on an H200 (torch 2.11): with a fresh key length every step, cuDNN's attention spent
    ~2.9 ms of host time per call (planning for the new shape), 70 of a 112 ms decode step. The
    flash / memory-efficient kernels have no per-shape planning.
    """
    if q.device.type != "cuda":
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_no_cudnn_backends()):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)


def host_offsets(lengths: list[int]) -> list[int]:
    return [0, *itertools.accumulate(lengths)]


def single_items(batch: RaggedBatch) -> list[int]:
    """Indices of the items that feed exactly one query token."""
    if "single_items" not in batch.scratch:
        batch.scratch["single_items"] = [i for i, n in enumerate(batch.q_lens) if n == 1]
    return batch.scratch["single_items"]


def leading_singles(batch: RaggedBatch) -> int:
    """How many items at the front of the batch are single-query (decodes come first)."""
    singles = single_items(batch)
    n = 0
    while n < len(singles) and singles[n] == n:
        n += 1
    return n


def _gather_index(batch: RaggedBatch, items: list[int], device: torch.device):
    key = ("single_index", tuple(items) if len(items) < 64 else (items[0], items[-1], len(items)))
    if key not in batch.scratch:
        cu_q, cu_k = host_offsets(batch.q_lens), host_offsets(batch.k_lens)
        rows = [cu_q[i] for i in items]
        starts = [cu_k[i] for i in items]
        lens = [batch.k_lens[i] for i in items]
        width = max(lens)
        meta = long_tensor(rows + starts + lens, device).view(3, len(items))
        offs = torch.arange(width, device=device)
        valid = offs[None, :] < meta[2][:, None]  # [n, width]
        index = meta[1][:, None] + torch.minimum(offs[None, :], meta[2][:, None] - 1)
        batch.scratch[key] = (meta[0], index, valid)
    return batch.scratch[key]


def _padded(x: torch.Tensor, batch: RaggedBatch, items: list[int], index: torch.Tensor,
            gather: bool | None = None) -> torch.Tensor:
    """Each item's keys (contiguous in the packed tensor), padded to the longest: [n, heads, width, d].

    On CUDA one gather kernel; on the CPU, row gathers of small rows are slow, so the items'
    contiguous slices are copied whole. Padding differs (repeated last key vs zeros) but is masked.
    """
    n, width = index.shape
    if gather if gather is not None else x.device.type == "cuda":
        return x.index_select(0, index.view(-1)).view(n, width, *x.shape[1:]).transpose(1, 2)
    cu_k = host_offsets(batch.k_lens)
    pieces = [x[cu_k[i]:cu_k[i] + batch.k_lens[i]] for i in items]
    return torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True).transpose(1, 2)


def padded_decode_sdpa(q: torch.Tensor, kk: torch.Tensor, vv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """One query per item against its padded keys: q [n, heads, d], kk/vv [n, kv_heads, width, d],
    valid [n, width] (False on padding). Returns [n, heads, d]."""
    n, heads, d = q.shape
    kv_heads = kk.shape[1]
    out = sdpa(q.view(n, kv_heads, heads // kv_heads, d), kk, vv, attn_mask=valid[:, None, None, :])
    return out.reshape(n, heads, d)


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: RaggedBatch,
                           items: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (query rows, their attention output [n, heads, d]) for the given single-query items."""
    rows, index, valid = _gather_index(batch, items, q.device)
    kk, vv = _padded(k, batch, items, index), _padded(v, batch, items, index)  # [n, kv_heads, width, d]
    return rows, padded_decode_sdpa(q[rows], kk, vv, valid)
