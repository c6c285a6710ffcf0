"""RMSNorm rounds as transformers' Llama does: bit for bit in bfloat16 and float16 (statistics in
float32, the weight applied in the input's dtype), and as torch's fused rms_norm in float32."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from engine.models.llama import RMSNorm


@pytest.mark.parametrize("rows", [1, 16, 64, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rms_norm_equals_transformers_llama_bit_for_bit(dtype, rows):
    gen = torch.Generator().manual_seed(0)
    # activations spread over four orders of magnitude, with an outlier channel as real models have
    x = torch.randn(rows, 576, generator=gen) * torch.logspace(-2, 2, 576)
    x[:, 7] = 300.0
    weight = torch.rand(576, generator=gen) + 0.5
    ours, theirs = RMSNorm(576, 1e-5), LlamaRMSNorm(576, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(weight)
        theirs.weight.copy_(weight)
        ours, theirs = ours.to(dtype), theirs.to(dtype)
        assert torch.equal(ours(x.to(dtype)), theirs(x.to(dtype)))
