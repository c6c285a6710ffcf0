"""Two engines stepped as one (`cbtui compare`): each step runs one step of every engine that still
has work, so the two runs stay on the same step number and one key moves both.

It is what the dashboard's EngineController drives in place of an engine: `step()` hands out a
`PairStep` (the two records of the step) instead of one StepRecord.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.records import RunHeader, StepRecord

from .breakpoints import Breakpoints
from .controller import SteppableEngine


@dataclass(frozen=True)
class PairStep:
    """One step of both runs: a run that had already finished has None in its place; `done` says
    which runs have no work left after this step."""

    records: tuple[StepRecord | None, ...]
    done: tuple[bool, ...]


class RunFailed(RuntimeError):
    """One of the runs raised: the message names it."""


class Lockstep:
    def __init__(self, engines: Sequence[SteppableEngine], names: Sequence[str] = ()):
        self.engines = tuple(engines)
        self.names = tuple(names) or tuple(f"run {i + 1}" for i in range(len(self.engines)))

    def step(self) -> PairStep:
        records = tuple(self._step(e, name) for e, name in zip(self.engines, self.names, strict=True))
        return PairStep(records, tuple(not e.has_unfinished() for e in self.engines))

    @staticmethod
    def _step(engine: SteppableEngine, name: str) -> StepRecord | None:
        if not engine.has_unfinished():
            return None
        try:
            return engine.step()
        except Exception as exc:  # the controller shows it; which run it was is what the reader needs
            raise RunFailed(f"{name}: {type(exc).__name__}: {exc}") from exc

    def has_unfinished(self) -> bool:
        return any(e.has_unfinished() for e in self.engines)

    def header(self) -> RunHeader:
        """The first run's header (the device both share, for the UI's thread count)."""
        return self.engines[0].header()


class PairBreakpoints(Breakpoints):
    """Breakpoints on a lockstep of runs: checked on each PairStep's first record (the runs share
    the step number), so `step:N` pauses both on step N."""

    def check(self, record: object) -> str | None:
        if isinstance(record, PairStep):
            record = next((r for r in record.records if r is not None), None)
        return super().check(record)
