"""How long each step's model work takes on the GPU, from two CUDA events.

The step's host time (perf_counter) says what a step costs; this says how much of it the device
was working from the first kernel of the forward pass to the logits. Their difference is host work
the GPU waits on. The events are read after sampling has synchronised anyway: no extra sync.
"""

from __future__ import annotations

import torch


class DeviceTimer:
    def __init__(self):
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._running = False

    def start(self) -> None:
        self._start.record()

    def stop(self) -> None:
        self._end.record()
        self._running = True

    def take_seconds(self) -> float:
        """The last start..stop span in seconds (0 when nothing ran since the last take)."""
        if not self._running:
            return 0.0
        self._running = False
        self._end.synchronize()  # already done after sampling: returns at once
        return self._start.elapsed_time(self._end) / 1000
