"""Compile the Triton paged-decode kernel ahead of time for NVIDIA GPUs this machine does not have,
and print what the compiler made of it, as JSON (one object per case).

Run as a script in its own process, because tests/conftest.py turns on Triton's interpreter,
which replaces the kernel with a Python stand-in that cannot be compiled:

    python tests/triton_aot.py 90:bfloat16:small 80:float32:tiny ...

Uses the ptxas and cuobjdump that ship inside the triton wheel; no GPU or driver needed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: it reads this once

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from engine.attention.paged_decode_triton import _paged_decode_kernel, launch_constants
from engine.models.llama import PRESETS

TRITON_TYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def signature(dtype: str) -> dict[str, str]:
    """Argument types as the launcher passes them: tensors of the pool's dtype, int64 tables and
    lengths (the engine's index tensors), int strides and a float scale."""
    sig = {}
    for name in _paged_decode_kernel.arg_names:
        if name in ("table_ptr", "lens_ptr"):
            sig[name] = "*i64"
        elif name.endswith("_ptr"):
            sig[name] = "*" + TRITON_TYPES[dtype]
        elif name == "scale":
            sig[name] = "fp32"
        elif name.isupper():
            sig[name] = "constexpr"
        else:
            sig[name] = "i32"
    return sig


def resources(cubin: bytes) -> dict[str, int]:
    """Registers and local memory (spills) per thread, from the wheel's cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    path = f"/tmp/cbtui_aot_{os.getpid()}.cubin"
    with open(path, "wb") as f:
        f.write(cubin)
    try:
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.remove(path)
    return {"registers": int(re.search(r"REG:(\d+)", usage).group(1)),
            "local_bytes": int(re.search(r"LOCAL:(\d+)", usage).group(1))}


def compile_case(arch: int, dtype: str, preset: str, block_size: int = 16) -> dict:
    spec = PRESETS[preset]
    constants = launch_constants(spec.num_heads, spec.num_kv_heads, spec.head_dim, block_size)
    source = ASTSource(fn=_paged_decode_kernel, signature=signature(dtype), constexprs=constants)
    kernel = triton.compile(source, target=GPUTarget("cuda", arch, 32))
    ptx = kernel.asm["ptx"]
    return {"arch": arch, "dtype": dtype, "preset": preset, "shared_bytes": kernel.metadata.shared,
            "tensor_core_ops": len(re.findall(r"\bw?mma\.", ptx)), **resources(kernel.asm["cubin"])}


if __name__ == "__main__":
    for case in sys.argv[1:]:
        arch, dtype, preset = case.split(":")
        print(json.dumps(compile_case(int(arch), dtype, preset)), flush=True)
