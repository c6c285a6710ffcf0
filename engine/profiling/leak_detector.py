"""MemoryLeakDetector: flags memory that keeps growing over the last `window` samples.

Memory in a serving engine goes up and down (KV blocks, allocator caching) and jumps once in a while
(a bigger batch, a new cache segment). A leak is different: it keeps climbing. So a series is flagged
only when, over the last `window` samples, both hold:
- the least-squares line rises by at least `min_growth_bytes` across the window, and
- the climb is sustained: the window is cut into `segments` consecutive parts and each part's median
  is above the previous one's by at least min_growth_bytes / (2 * segments), half of what an even climb
  of the minimum size gives. One jump followed by a plateau fails this; so does a sawtooth.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from ..records.stats import linear_slope


@dataclass(frozen=True, slots=True)
class LeakVerdict:
    leaking: bool
    metric: str | None
    samples: int  # samples examined (at most the window)
    slope_bytes_per_sample: float
    growth_bytes: float  # the fitted line's rise across the samples examined
    reason: str

    def __bool__(self) -> bool:
        return self.leaking


class MemoryLeakDetector:
    def __init__(self, window: int = 32, min_growth_bytes: int = 8 << 20, segments: int = 4):
        if isinstance(segments, bool) or not isinstance(segments, int) or segments < 2:
            raise ValueError(f"segments={segments!r} must be an integer >= 2")
        if isinstance(window, bool) or not isinstance(window, int) or window < 2 * segments:
            raise ValueError(f"window={window!r} must be an integer >= 2 * segments ({2 * segments})")
        if not isinstance(min_growth_bytes, (int, float)) or not min_growth_bytes > 0:
            raise ValueError(f"min_growth_bytes={min_growth_bytes!r} must be a number > 0")
        self.window = window
        self.min_growth_bytes = min_growth_bytes
        self.segments = segments

    def check(self, values: Sequence[float], metric: str | None = None) -> LeakVerdict:
        """Looks at the last `window` values (one per step, oldest first)."""
        recent = list(values)[-self.window:]
        n = len(recent)
        if n < self.window:
            return LeakVerdict(False, metric, n, 0.0, 0.0,
                               f"{n} of {self.window} samples: too few to judge")
        slope = linear_slope(recent)
        growth = slope * (n - 1)
        mib = self.min_growth_bytes / (1 << 20)
        if growth < self.min_growth_bytes:
            return LeakVerdict(False, metric, n, slope, growth,
                               f"grew {growth / (1 << 20):.2f} MiB over {n} samples (< {mib:.2f} MiB)")
        size = n // self.segments
        medians = [statistics.median(recent[i * size:(i + 1) * size]) for i in range(self.segments)]
        step = self.min_growth_bytes / (2 * self.segments)
        for i, (a, b) in enumerate(pairwise(medians)):
            if b - a < step:
                return LeakVerdict(False, metric, n, slope, growth,
                                   f"grew {growth / (1 << 20):.2f} MiB but not steadily: part {i + 2} of "
                                   f"{self.segments} rose {(b - a) / (1 << 20):.2f} MiB over part {i + 1}")
        return LeakVerdict(True, metric, n, slope, growth,
                           f"grew {growth / (1 << 20):.2f} MiB over {n} samples, "
                           f"{slope / 1024:.1f} KiB per sample, in every part of the window")
