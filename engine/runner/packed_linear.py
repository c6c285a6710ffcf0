"""bfloat16 linear layers on the CPU with their weights packed once, in oneDNN's own layout.

A plain bf16 `F.linear` on the CPU hands oneDNN a row-major weight that it reorders into its
blocked (AMX/avx512_bf16) layout on every call: in a decode step of a few rows, that reorder costs
about as much as the multiply. Packing each weight once when the model is built skips it. The
results are bit for bit those of `F.linear` (tests/test_packed_linear.py checks every row count a
step can have); only the time changes. `cbtui bench real --breakdown` shows the linear layers' share.

The packed copy lives beside the parameter: the parameter stays what the rest of the engine reads
(the memory panel's weight bytes, a tied output head's embedding, a sharded copy).
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def packing_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why weights cannot be packed here, or None when they can."""
    if device.type != "cpu":
        return f"packing is for the CPU (device is {device.type})"
    if dtype != torch.bfloat16:
        return f"packing is for bfloat16 (dtype is {str(dtype).replace('torch.', '')}); float32 keeps MKL's GEMM"
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "this CPU has no bfloat16 support in oneDNN"
    return None


def _packed_forward(packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or x.dtype != torch.bfloat16:  # the engine's batches are [tokens, features]
        return nn.functional.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def pack_linear_weights(model: nn.Module) -> int:
    """Packs the weight of every bf16 nn.Linear of `model` (on the CPU) and routes its forward
    through the packed copy; returns how many were packed (0 where packing_problem says why not)."""
    packed = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or packing_problem(module.weight.device, module.weight.dtype):
            continue
        packed_weight = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), None)
        bias = module.bias.detach() if module.bias is not None else None
        module.forward = functools.partial(_packed_forward, packed_weight, module.weight, bias)  # type: ignore[method-assign]
        packed += 1
    return packed
