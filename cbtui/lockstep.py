"""Two engines stepped as one (`cbtui compare`): each step runs one step of every engine that still
has work, so the two runs stay on the same step number and one key moves both.

It is what the dashboard's EngineController drives in place of an engine: `step()` hands out a
`PairStep` (the two records of the step) instead of one StepRecord.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.records import RunHeader, StepRecord

from .controller import SteppableEngine


@dataclass(frozen=True)
class PairStep:
    """One step of both runs: a run that had already finished has None in its place; `done` says
    which runs have no work left after this step."""

    records: tuple[StepRecord | None, ...]
    done: tuple[bool, ...]


class Lockstep:
    def __init__(self, engines: Sequence[SteppableEngine]):
        self.engines = tuple(engines)

    def step(self) -> PairStep:
        records = tuple(e.step() if e.has_unfinished() else None for e in self.engines)
        return PairStep(records, tuple(not e.has_unfinished() for e in self.engines))

    def has_unfinished(self) -> bool:
        return any(e.has_unfinished() for e in self.engines)

    def header(self) -> RunHeader:
        """The first run's header (the device both share, for the UI's thread count)."""
        return self.engines[0].header()
