"""The CPU's decode kernel (cpu_kernels/csrc/paged_decode.cpp): when it can run, and its call.

The gather path (paged_decode.py) copies each decode's blocks out of the pool before sdpa reads
them back; this kernel reads every cached key and value once, in place, for all query heads of a
group, and its output for a decode depends on that decode's keys alone.
"""

from __future__ import annotations

import torch

from ..cpu_kernels import build, is_built

HEAD_SIZES = (16, 32, 64, 128, 256)
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def cpp_problem(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the C++ decode kernel cannot run here, or None when it can (building it if need be)."""
    if device.type != "cpu":
        return f"it runs on the CPU (device is {device.type})"
    if dtype not in DTYPES:
        return f"it handles float32, bfloat16, float16 and float64, not {str(dtype).replace('torch.', '')}"
    if head_dim not in HEAD_SIZES:
        return f"it needs a head size of {', '.join(map(str, HEAD_SIZES))} (got {head_dim})"
    return build()


def paged_decode_cpp(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                     key_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Same contract as paged_decode.paged_decode_attention: q [n, heads, d] (rows contiguous);
    pools [slots, kv_heads, d]; tables [n, >= blocks of the longest key length]; key_lens [n].
    Returns [n, heads, d]."""
    problem = None if is_built() else build()
    if problem:
        raise RuntimeError(f"the C++ decode kernel is not available: {problem}")
    return torch.ops.cbtui.paged_decode(q, k_pool, v_pool, tables, key_lens, block_size, q.shape[-1] ** -0.5)
