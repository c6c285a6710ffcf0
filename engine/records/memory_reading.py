"""A live device-memory reading (what the dashboard's memory panel draws): plain data, as records are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuMemory:
    index: int  # the device's index as the process sees it (after CUDA_VISIBLE_DEVICES)
    name: str
    used_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class MemoryReading:
    gpus: tuple[GpuMemory, ...] = ()
    rss_bytes: int = 0
    note: str = ""  # why there are no GPU figures, when there are none
    source: str = "nvml"  # "nvml", "rss" or "recorded" (a replay: no live figures at all)
