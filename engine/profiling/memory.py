"""Memory readings for the step record: torch's CUDA allocator on a GPU, process RSS on the CPU."""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a replay or a viewer reads memory figures without loading torch
    import torch

from ..records import MemoryView

# /proc/self/statm kept open (opening it was most of a step record's time), per process: a
# descriptor inherited through fork would still read the parent.
_statm: dict[int, int] = {}  # pid -> descriptor
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_rss_bytes() -> int:
    try:
        pid = os.getpid()
        if pid not in _statm:
            _statm.clear()
            _statm[pid] = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm[pid], 256, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux: peak RSS is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_ram_bytes() -> int | None:
    """RAM a new allocation can take now (MemAvailable, else the free pages); None if neither is readable."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def cuda_allocator_bytes(device: torch.device) -> tuple[int, int]:
    """(allocated, reserved) bytes of torch's CUDA caching allocator, from one C call.

    torch.cuda.memory_allocated() and memory_reserved() each flatten and sort all ~120 allocator
    statistics in Python to return one of them; this runs every step, inside the StepRecord."""
    import torch

    stats = torch.cuda.memory_stats_as_nested_dict(device)
    if not stats:  # CUDA not initialised yet: nothing allocated
        return 0, 0
    return stats["allocated_bytes"]["all"]["current"], stats["reserved_bytes"]["all"]["current"]


def memory_view(device: torch.device, weight_bytes: int, kv_pool_bytes: int) -> MemoryView:
    rss = process_rss_bytes()
    if device.type == "cuda":
        return MemoryView("cuda", *cuda_allocator_bytes(device), rss, weight_bytes, kv_pool_bytes)
    return MemoryView("rss", 0, 0, rss, weight_bytes, kv_pool_bytes)
