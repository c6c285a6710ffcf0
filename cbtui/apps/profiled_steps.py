"""An engine whose every step runs inside a DetailedMemoryProfiler context ("engine steps").

The dashboard's engine thread steps it; the profiler is looked up at each step (the app makes a
new one when the run restarts), so the metrics screen can show what memory the steps leave behind
next to what the records cost (a context on the UI thread) and what the engine holds.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.profiling.detailed_memory_profiler import DetailedMemoryProfiler
from engine.records import RunHeader, StepRecord

from ..render.metrics_view import STEP_CONTEXT


class ProfiledSteps:
    def __init__(self, engine, profiler: Callable[[], DetailedMemoryProfiler]):
        self.engine, self._profiler = engine, profiler

    def step(self) -> StepRecord | None:
        with self._profiler().context(STEP_CONTEXT):
            return self.engine.step()

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def header(self) -> RunHeader:
        return self.engine.header()

    def __getattr__(self, name: str):
        """Everything else is the engine's (abort, where the engine can; a replay cannot)."""
        return getattr(self.engine, name)
