"""The CPU's compiled kernels (csrc/): C++ built once per machine, loaded as torch.ops.cbtui.*."""

from .loader import build, is_built

__all__ = ["build", "is_built"]
