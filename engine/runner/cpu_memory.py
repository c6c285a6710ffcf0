"""A step's large CPU tensors reuse memory freed by the step before, instead of new pages.

glibc serves an allocation above its mmap threshold with fresh pages from the system, and hands
free heap memory above its trim threshold back to it (both start at 128 KiB and rise only as far
as the blocks freed so far). A prefill step's intermediates are a few MB each, made and freed
op after op, so each of them faulted its pages in anew: the first step of 64 chat prompts
(smollm2, 2,048 tokens) took 1.3x as long. Raised thresholds keep freed memory in the heap for the
next op; the process then stays at the peak a step reached instead of shrinking between steps.
Left alone where the user set glibc's malloc tunables, and where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
# Above any intermediate of a CPU step (an 8,192-token step's MLP output in bf16 is 50 MB); larger
# blocks (KV pools, whole checkpoints) still get their own mappings, given back when freed.
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20
USER_SETTINGS = ("GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raises glibc's mmap and trim thresholds once per process; True when they are raised (now or
    before), False where the user's settings or another C library leave them as they are."""
    global _done
    if _done is None:
        _done = _raise_thresholds()
    return _done


def _raise_thresholds() -> bool:
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):  # one without mallopt (musl, macOS)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
