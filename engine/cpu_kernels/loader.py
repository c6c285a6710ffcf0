"""Builds the CPU kernels (csrc/*.cpp, one library of torch.ops.cbtui.* ops) once per machine, then
loads them.

They are compiled on first use with the machine's own instruction set (torch.utils.cpp_extension;
needs a C++ compiler and ninja) into $XDG_CACHE_HOME/cbtui/kernels (~/.cache by default), under a
name that carries the CPU's flags and a hash of the sources, flags and torch version: a home folder
shared by different machines never loads another CPU's build, and two versions of cbtui never
rebuild a library under each other. A build killed midway leaves torch's lock file behind, and torch would then
wait on it forever: builds take a lock of their own (released by the OS when the process dies) and
clear a stale one under it. Floating-point contraction is off: a kernel that stands in for a chain
of torch ops (rotary_write.cpp) rounds after every operation as they do.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
import warnings
from pathlib import Path

SOURCES = sorted(Path(__file__).with_name("csrc").glob("*.cpp"))
HEADERS = sorted(Path(__file__).with_name("csrc").glob("*.h"))
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-Wno-psabi"]

_built: bool = False
_build_error: str | None = None
_building = threading.Lock()  # engines built on two threads at once load the library once


def is_built() -> bool:
    return _built


def build() -> str | None:
    """Builds (or loads the cached build of) the kernels once per process; None when they are
    ready, else why they could not be built, in one line."""
    global _built, _build_error
    with _building:
        if not _built and _build_error is None:
            try:
                _load()
                _built = True
            except Exception as exc:  # no compiler, no ninja, a compile error: torch's own ops serve
                lines = [line for line in str(exc).splitlines() if line.strip()]
                _build_error = f"building it failed: {type(exc).__name__}: {lines[0][:200] if lines else ''}"
    return _build_error


def build_folder(name: str) -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cbtui" / "kernels" / name


def library_name() -> str:
    import torch

    made_of = hashlib.sha256(" ".join([torch.__version__, *FLAGS]).encode())
    for source in [*SOURCES, *HEADERS]:
        made_of.update(source.name.encode() + source.read_bytes())
    return f"cbtui_cpu_kernels_{cpu_fingerprint()}_{made_of.hexdigest()[:8]}"


def _load() -> None:
    import fcntl  # POSIX only: elsewhere the build fails here, and torch's own ops serve

    from torch.utils.cpp_extension import load

    _put_ninja_on_path()
    name = library_name()
    folder = build_folder(name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cbtui.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the OS frees it if we die
        (folder / "lock").unlink(missing_ok=True)  # torch's own, left by a build that was killed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on the compiler's version
            load(name, [str(s) for s in SOURCES], extra_cflags=FLAGS, build_directory=str(folder),
                 is_python_module=False, verbose=False)


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
