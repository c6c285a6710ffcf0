"""Memory readings for the step record: torch's CUDA allocator on a GPU, process RSS on the CPU."""

from __future__ import annotations

import os
import resource

import torch

from .records import MemoryView


def process_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: peak RSS is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_view(device: torch.device, weight_bytes: int, kv_pool_bytes: int) -> MemoryView:
    rss = process_rss_bytes()
    if device.type == "cuda":
        return MemoryView("cuda", torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device),
                          rss, weight_bytes, kv_pool_bytes)
    return MemoryView("rss", 0, 0, rss, weight_bytes, kv_pool_bytes)
