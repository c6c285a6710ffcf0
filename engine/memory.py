"""Memory readings for the step record: torch's CUDA allocator on a GPU, process RSS on the CPU."""

from __future__ import annotations

import os
import resource

import torch

from .records import MemoryView


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


def memory_view(device: torch.device, weight_bytes: int, kv_pool_bytes: int) -> MemoryView:
    rss = process_rss_bytes()
    if device.type == "cuda":
        return MemoryView("cuda", torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device),
                          rss, weight_bytes, kv_pool_bytes)
    return MemoryView("rss", 0, 0, rss, weight_bytes, kv_pool_bytes)
