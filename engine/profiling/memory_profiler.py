"""MemoryProfiler: one memory reading per step, from every available source.

Feed it each StepRecord (`observe`) or call `sample()` when you like. It reads its sources live, so it
must run in the engine's process (a recording carries only the record's own MemoryView). A source that
fails is dropped with its reason in `unavailable`; profiling never stops a run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type here: a replay or a viewer profiles recorded memory without torch
    import torch

from ..records import StepRecord
from .leak_detector import LeakVerdict, MemoryLeakDetector
from .nvml import Nvml
from .sources import MemorySource, SourceUnavailable, open_sources


@dataclass(frozen=True, slots=True)
class MemorySample:
    step: int | None
    values: dict[str, int]  # metric name (e.g. "rss", "cuda.allocated", "nvml.used") -> bytes


class MemoryProfiler:
    def __init__(self, sources: list[MemorySource] | None = None, device: torch.device | str = "cpu",
                 max_samples: int = 10_000, nvml: Nvml | None = None):
        """`sources` None: the ones that work for `device` (see sources.open_sources), NVML's read
        through `nvml` when given (the dashboard shares its probe's session).

        Only the last `max_samples` samples are kept, so a long run does not itself leak.
        """
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
            raise ValueError(f"max_samples={max_samples!r} must be an integer >= 1")
        if sources is None:
            sources, unavailable = open_sources(device, nvml)
        else:
            unavailable = {}
        self.sources: list[MemorySource] = list(sources)
        self.unavailable: dict[str, str] = dict(unavailable)  # source name -> why it gives no readings
        self.samples: deque[MemorySample] = deque(maxlen=max_samples)
        self.last_step: int | None = None

    def read(self) -> dict[str, int]:
        """One reading of every working source; a failing source is dropped, never raised."""
        values: dict[str, int] = {}
        for source in list(self.sources):
            try:
                values.update(source.read())
            except Exception as exc:  # SourceUnavailable or anything a driver throws
                reason = str(exc) if isinstance(exc, SourceUnavailable) else f"{type(exc).__name__}: {exc}"
                self.sources.remove(source)
                self.unavailable[source.name] = reason
        return values

    def sample(self, step: int | None = None) -> MemorySample:
        return self._keep(MemorySample(step if step is not None else self.last_step, self.read()))

    def _keep(self, sample: MemorySample) -> MemorySample:
        self.samples.append(sample)
        return sample

    def observe(self, record: StepRecord) -> MemorySample:
        """Call right after the engine returned `record`: the reading then belongs to that step."""
        self.last_step = record.step
        return self.sample(record.step)

    def observe_recorded(self, record: StepRecord) -> MemorySample:
        """A replay's reading: the record's own MemoryView, as the run's process saw it then (that
        process is gone; reading this one's memory would profile the viewer, not the run)."""
        memory = record.memory
        values = {"rss": memory.rss_bytes}
        if memory.source == "cuda":
            values.update({"cuda.allocated": memory.allocated_bytes, "cuda.reserved": memory.reserved_bytes})
        self.last_step = record.step
        return self._keep(MemorySample(record.step, values))

    # -- views ----------------------------------------------------------------------------
    @property
    def metrics(self) -> list[str]:
        names: dict[str, None] = {}
        for s in self.samples:
            names.update(dict.fromkeys(s.values))
        return list(names)

    def series(self, metric: str) -> list[tuple[int | None, int]]:
        """(step, bytes) for every sample that has the metric."""
        return [(s.step, s.values[metric]) for s in self.samples if metric in s.values]

    def latest(self) -> MemorySample | None:
        return self.samples[-1] if self.samples else None

    def summary(self) -> dict[str, dict[str, int]]:
        """Per metric: first, last, min, max and growth (last - first) over the kept samples."""
        out = {}
        for metric in self.metrics:
            values = [v for _, v in self.series(metric)]
            out[metric] = {"first": values[0], "last": values[-1], "min": min(values), "max": max(values),
                           "growth": values[-1] - values[0]}
        return out

    def check_leaks(self, detector: MemoryLeakDetector | None = None) -> dict[str, LeakVerdict]:
        """The leak detector's verdict on each metric's series."""
        detector = detector or MemoryLeakDetector()
        return {m: detector.check([v for _, v in self.series(m)], metric=m) for m in self.metrics}
