"""Attention backends over one ragged batch.

Each backend takes q [T, heads, d], packed keys/values [K, kv_heads, d] (item after item, as
the KV cache reads them) and the RaggedBatch, and returns [T, heads, d].
"""

from __future__ import annotations

import torch

from .flex import flex_attention_ragged, flex_available
from .reference import reference_attention
from .sdpa import sdpa_attention

BACKENDS = {"reference": reference_attention, "sdpa": sdpa_attention, "flex": flex_attention_ragged}


def available_backends(device: torch.device) -> list[str]:
    return [name for name in BACKENDS if name != "flex" or flex_available(device)]


def resolve_backend(name: str, device: torch.device) -> str:
    """`auto` picks the fastest backend that works here: flex on CUDA, sdpa elsewhere."""
    if name == "auto":
        return "flex" if device.type == "cuda" and flex_available(device) else "sdpa"
    if name not in available_backends(device):
        raise ValueError(f"attention={name!r} is not available on {device.type}; "
                         f"choose one of: {', '.join(available_backends(device))}")
    return name


def get_backend(name: str):
    return BACKENDS[name]
