"""Which decode attention reads the paged pool: a kernel (Triton on CUDA, C++ on the CPU) or the
block gather.

`triton` and `cpp` read every cached byte once, for all query heads of a group, and need no
padding; `gather` (any device) copies each decode's blocks out of the pool and runs
scaled_dot_product_attention: on CUDA padded to the longest table, one call; on the CPU grouped by
table width, no padding (paged_decode.py). `auto` takes the device's kernel where it can run (the
C++ one is built on first use: cpu_kernels/loader.py), and says why where it cannot.

Both are called as decode(q, k_pool, v_pool, tables, key_lens, block_size, groups=None), where
`groups` is what decode.plan(...) made once for the step (None: the padded call, as the decode
graphs, whose tables have a fixed width, always make it).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from .paged_decode import DecodeGroups, grouped_decode_attention, paged_decode_attention, plan_decode_groups
from .paged_decode_cpp import cpp_problem, paged_decode_cpp


def triton_problem(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the Triton decode kernel cannot run here, or None when it can."""
    if device.type != "cuda":
        return f"it needs CUDA (device is {device.type})"
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"it handles float16, bfloat16 and float32, not {str(dtype).replace('torch.', '')}"
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"it needs a power-of-two head size of at least 16 (got {head_dim})"
    try:
        found = importlib.util.find_spec("triton") is not None
    except ValueError:  # a module entry set to None (tests): as good as absent
        found = False
    return None if found else "triton is not installed"


class TritonDecode:
    """The kernel, with the block gather behind it should it fail to build (said once, as a warning)."""

    name = "triton"

    def __init__(self):
        self.broken: str | None = None

    @property
    def reads_tables(self) -> bool:
        """True while the kernel runs: it reads tables up to each key length, so any width will do.
        Once it has fallen back to the gather, whose cost grows with the width, tables stay tight."""
        return self.broken is None

    def plan(self, tables: torch.Tensor, key_lens: list[int], block_size: int, key_bytes: int) -> None:
        return None  # CUDA: the kernel, or the padded gather behind it

    def __call__(self, q, k_pool, v_pool, tables, key_lens, block_size, groups: DecodeGroups | None = None):
        if self.broken is None:
            try:
                from .paged_decode_triton import paged_decode_triton

                return paged_decode_triton(q, k_pool, v_pool, tables, key_lens, block_size)
            except Exception as exc:  # e.g. no Triton backend for this GPU
                self.broken = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                warnings.warn(f"Triton decode attention failed, using the block gather: {self.broken}", stacklevel=2)
        return paged_decode_attention(q, k_pool, v_pool, tables, key_lens, block_size)


class CppDecode:
    """The CPU kernel (built before this is made: choose_decode_attention)."""

    name = "cpp"
    reads_tables = True  # reads each table up to its key length, so any width will do
    broken = None

    def plan(self, tables: torch.Tensor, key_lens: list[int], block_size: int, key_bytes: int) -> None:
        return None

    def __call__(self, q, k_pool, v_pool, tables, key_lens, block_size, groups: DecodeGroups | None = None):
        return paged_decode_cpp(q, k_pool, v_pool, tables, key_lens, block_size)


class GatherDecode:
    name = "gather"
    reads_tables = False  # cost grows with the table width: keep it tight
    broken = None

    def __init__(self, unused_kernel: str | None = None):
        self.unused_kernel = unused_kernel  # why auto did not take the device's kernel, if it tried

    def plan(self, tables: torch.Tensor, key_lens: list[int], block_size: int, key_bytes: int) -> DecodeGroups | None:
        """On the CPU, the step's decodes grouped by table width (once per step, every layer uses it),
        or None where one padded call is the same thing; on CUDA None: one padded call (fixed shapes,
        one kernel per op)."""
        return plan_decode_groups(tables, key_lens, block_size, key_bytes) if tables.device.type == "cpu" else None

    def __call__(self, q, k_pool, v_pool, tables, key_lens, block_size, groups: DecodeGroups | None = None):
        if groups is not None:
            return grouped_decode_attention(q, k_pool, v_pool, groups, block_size)
        return paged_decode_attention(q, k_pool, v_pool, tables, key_lens, block_size)


def choose_decode_attention(mode: str, device: torch.device, dtype: torch.dtype, head_dim: int):
    """The decode attention for EngineConfig.runner.decode_attention; ValueError when the kernel
    asked for ('triton', 'cpp') cannot run."""
    if mode == "gather":
        return GatherDecode()
    kernel = mode if mode != "auto" else "triton" if device.type == "cuda" else "cpp"
    problem = (triton_problem if kernel == "triton" else cpp_problem)(device, dtype, head_dim)
    if problem and mode != "auto":
        raise ValueError(f"decode_attention={mode!r} cannot run: {problem}; use 'auto' or 'gather'")
    if problem:
        return GatherDecode(f"{kernel} decode kernel: {problem}")
    return TritonDecode() if kernel == "triton" else CppDecode()
