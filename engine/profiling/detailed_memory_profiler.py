"""DetailedMemoryProfiler: named snapshots and contexts on top of the per-step MemoryProfiler.

    profiler.snapshot("after warm-up")
    with profiler.context("prefill-heavy"):
        record = engine.step()
        profiler.observe(record)
    profiler.delta("after warm-up", profiler.latest_snapshot())
    profiler.context_summary()["prefill-heavy"]["total"]["rss"]

A context records memory at entry and exit, and the peak of every reading taken inside it (per-step
samples included). Entering the same context name many times (say, for every prefill-heavy step) and
summing its deltas shows which kind of work memory grows in: a context whose total keeps climbing
while others net to zero is where to look for a leak.

Alongside the measured contexts, `hold(name, bytes)` notes memory a part says it holds (the engine's
weights and KV pool, from each StepRecord's MemoryView), so a table can show memory by part: what is
held for good, and where growth happens (the dashboard's metrics screen: engine steps, records).

Contexts may run on one thread while another samples or reads the summary (the dashboard: steps on
the engine thread, records on the UI thread); a lock keeps the shared state consistent.
"""

from __future__ import annotations

import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

from .memory_profiler import MemoryProfiler, MemorySample


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str
    step: int | None
    values: dict[str, int]
    contexts: tuple[str, ...]  # the contexts open when it was taken, outermost first
    info: dict = field(default_factory=dict)  # whatever the caller passed to describe it


@dataclass(frozen=True, slots=True)
class ContextDelta:
    name: str
    start: Snapshot
    end: Snapshot
    delta: dict[str, int]  # end - start, for metrics both have
    peak: dict[str, int]  # highest reading inside the context (start, end and samples in between)
    failed: bool  # the body raised (the delta is still recorded)


def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """b - a for the metrics both readings have."""
    return {k: b[k] - a[k] for k in a if k in b}


class _Frame:
    def __init__(self, name: str, start: Snapshot):
        self.name, self.start = name, start
        self.peak = dict(start.values)

    def see(self, values: dict[str, int]) -> None:
        for k, v in values.items():
            if v > self.peak.get(k, v - 1):
                self.peak[k] = v


class DetailedMemoryProfiler(MemoryProfiler):
    def __init__(self, *args, max_snapshots: int = 10_000, **kwargs):
        super().__init__(*args, **kwargs)
        self.snapshots: deque[Snapshot] = deque(maxlen=max_snapshots)
        self.contexts: deque[ContextDelta] = deque(maxlen=max_snapshots)  # the latest, for inspection
        self._totals: dict[str, dict] = {}  # per context name, over every run (not only those kept)
        self._open: list[_Frame] = []
        self.held: dict[str, int] = {}  # part name -> bytes it says it holds (hold)
        self._lock = threading.RLock()

    def hold(self, name: str, nbytes: int) -> None:
        """Notes that `name` holds `nbytes` now (e.g. "weights", "KV pool")."""
        with self._lock:
            self.held[name] = int(nbytes)

    def sample(self, step: int | None = None) -> MemorySample:
        s = super().sample(step)
        with self._lock:
            for frame in self._open:
                frame.see(s.values)
        return s

    def snapshot(self, name: str, step: int | None = None, **info) -> Snapshot:
        """Reads every source now and keeps the reading under `name` (names may repeat)."""
        return self._snapshot(name, step, info, keep=True)

    def _snapshot(self, name, step, info, keep: bool) -> Snapshot:
        values = self.read()
        with self._lock:
            snap = Snapshot(name, step if step is not None else self.last_step, values,
                            tuple(f.name for f in self._open), info)
            for frame in self._open:
                frame.see(values)
            if keep:
                self.snapshots.append(snap)
        return snap

    def latest_snapshot(self, name: str | None = None) -> Snapshot:
        for snap in reversed(self.snapshots):
            if name is None or snap.name == name:
                return snap
        raise KeyError(f"no snapshot named {name!r}" if name else "no snapshot taken yet")

    def delta(self, a: str | Snapshot, b: str | Snapshot) -> dict[str, int]:
        """Memory of b minus memory of a; a name means the latest snapshot with that name."""
        sa = a if isinstance(a, Snapshot) else self.latest_snapshot(a)
        sb = b if isinstance(b, Snapshot) else self.latest_snapshot(b)
        return diff(sa.values, sb.values)

    @contextmanager
    def context(self, name: str, step: int | None = None, **info):
        """Measures the memory a block of work leaves behind (delta) and needs on the way (peak)."""
        frame = _Frame(name, self._snapshot(name, step, info, keep=False))
        with self._lock:
            self._open.append(frame)
        failed = True
        try:
            yield frame.start
            failed = False
        finally:
            end = self._snapshot(name, None, info, keep=False)
            with self._lock:
                self._open.remove(frame)
                delta = ContextDelta(name, frame.start, end, diff(frame.start.values, end.values),
                                     dict(frame.peak), failed)
                self.contexts.append(delta)
                self._add_to_totals(delta)

    def _add_to_totals(self, c: ContextDelta) -> None:
        entry = self._totals.setdefault(c.name, {"count": 0, "total": {}, "max": {}, "peak": {}})
        entry["count"] += 1
        for k, v in c.delta.items():
            entry["total"][k] = entry["total"].get(k, 0) + v
            entry["max"][k] = max(entry["max"].get(k, v), v)
        for k, v in c.peak.items():
            entry["peak"][k] = max(entry["peak"].get(k, v), v)

    def context_summary(self) -> dict[str, dict]:
        """Per context name, over every time it ran: count, and per metric the total, mean and largest
        delta and the highest peak."""
        out = {}
        with self._lock:
            for name, entry in self._totals.items():
                out[name] = {"count": entry["count"], "total": dict(entry["total"]), "max": dict(entry["max"]),
                             "peak": dict(entry["peak"]),
                             "mean": {k: v / entry["count"] for k, v in entry["total"].items()}}
        return out
