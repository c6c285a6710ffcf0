"""The CPU's decode kernel (csrc/paged_decode_cpu.cpp): built once per machine, then loaded.

The gather path (paged_decode.py) copies each decode's blocks out of the pool before sdpa reads
them back; this kernel reads every cached key and value once, in place, for all query heads of a
group, and its output for a decode depends on that decode's keys alone. It is compiled on first
use with the machine's own instruction set (torch.utils.cpp_extension; needs a C++ compiler and
ninja) into $XDG_CACHE_HOME/cbtui/kernels (~/.cache by default), under a name that carries the CPU's
flags, so a home folder
shared by different machines never loads another CPU's build. A build killed midway leaves torch's
lock file behind, and torch would then wait on it forever: builds take a lock of their own
(released by the OS when the process dies) and clear a stale one under it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("csrc") / "paged_decode_cpu.cpp"
HEAD_SIZES = (16, 32, 64, 128, 256)
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)

_built: bool = False
_build_error: str | None = None
_building = threading.Lock()  # engines built on two threads at once load the library once


def cpp_problem(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the C++ decode kernel cannot run here, or None when it can (building it if need be)."""
    if device.type != "cpu":
        return f"it runs on the CPU (device is {device.type})"
    if dtype not in DTYPES:
        return f"it handles float32, bfloat16, float16 and float64, not {str(dtype).replace('torch.', '')}"
    if head_dim not in HEAD_SIZES:
        return f"it needs a head size of {', '.join(map(str, HEAD_SIZES))} (got {head_dim})"
    return build()


def build() -> str | None:
    """Builds (or loads the cached build of) the kernel once per process; None when it is ready,
    else why it could not be built, in one line."""
    global _built, _build_error
    with _building:
        if not _built and _build_error is None:
            try:
                _load()
                _built = True
            except Exception as exc:  # no compiler, no ninja, a compile error: the gather path serves
                lines = [line for line in str(exc).splitlines() if line.strip()]
                _build_error = f"building it failed: {type(exc).__name__}: {lines[0][:200] if lines else ''}"
    return _build_error


def build_folder(name: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cbtui" / "kernels" / name


def _load() -> None:
    import fcntl  # POSIX only: elsewhere the build fails here, and the gather serves

    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    name = f"cbtui_paged_decode_{cpu_fingerprint()}"
    folder = build_folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cbtui.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the OS frees it if we die
        (folder / "lock").unlink(missing_ok=True)  # torch's own, left by a build that was killed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the compiler's version
            load(name, [str(SOURCE)], extra_cflags=["-O3", "-march=native", "-Wno-psabi"],
                 build_directory=str(folder), is_python_module=False, verbose=False)


def _put_ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the one pip installed with cbtui sits beside the venv's Python,
    which is not on PATH when cbtui is started by its full path."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def cpu_fingerprint() -> str:
    """A short hash of this CPU's model and instruction-set flags (what -march=native compiles for)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
        model = next((line for line in info.splitlines() if line.startswith("model name")), "")
    except OSError:
        flags, model = "", platform.processor()
    text = f"{platform.machine()} {model} {flags}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def paged_decode_cpp(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, tables: torch.Tensor,
                     key_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Same contract as paged_decode.paged_decode_attention: q [n, heads, d] (rows contiguous);
    pools [slots, kv_heads, d]; tables [n, >= blocks of the longest key length]; key_lens [n].
    Returns [n, heads, d]."""
    problem = None if _built else build()
    if problem:
        raise RuntimeError(f"the C++ decode kernel is not available: {problem}")
    return torch.ops.cbtui.paged_decode(q, k_pool, v_pool, tables, key_lens, block_size, q.shape[-1] ** -0.5)
