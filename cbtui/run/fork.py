"""The dashboard's fork (`f`): the run on screen as two runs side by side in `cbtui compare`.

A: the run as it went up to step N (the scenario, the requests typed in with `a`, the knobs
turned with `k` and the requests aborted with `x` by step N), then left alone. B: the same, with
the changes given from step N + 1 on. Both are built from the same scenario object the dashboard
runs, so they share steps 0..N record for record (greedy sampling is exact).

The plan travels to the compare view's process as a pickle in a private temporary file: the
dashboard suspends itself, that process takes the terminal, and q there comes back here.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scenarios.loader import Scenario
from scenarios.variant_pair import Variant

from .knobs import shown


@dataclass(frozen=True)
class ForkPlan:
    scenario: Scenario  # as the dashboard built its engine from it (its --at changes included)
    variant: str | None  # the scenario's [compare] variant the dashboard runs, if any
    overrides: dict[str, Any]  # the command line's engine settings (device, model, ...)
    step: int  # N, the last step both runs share
    turned: tuple[tuple[int, str, Any], ...]  # knobs turned in the dashboard by step N: (step, name, value)
    added: tuple[dict, ...]  # requests typed in (Engine.add_request keywords, arrival step and id given)
    changes: tuple[tuple[str, Any], ...]  # B's changes from step N + 1: (name, value)
    aborted: tuple[tuple[int, int], ...] = ()  # requests aborted in the dashboard by step N: (step, id)

    def change_texts(self) -> list[str]:
        """B's changes as --fork writes them: STEP:KEY=VALUE."""
        return [f"{self.step + 1}:{name}={shown(value)}" for name, value in self.changes]

    def as_it_ran(self) -> Scenario:
        changes = list(self.scenario.changes) + [(step, {name: value}) for step, name, value in self.turned]
        return replace(self.scenario, requests=[*self.scenario.requests, *self.added], changes=changes)

    def runs(self) -> tuple[Variant, Variant]:
        """(A, B) for cbtui compare: both the same until step N, B changed from N + 1."""
        a = self.as_it_ran()
        b = replace(a, changes=[*a.changes, (self.step + 1, dict(self.changes))])
        return (AbortingVariant(f"as it ran to step {self.step}", a, self.variant, self.aborted),
                AbortingVariant(f"fork {' '.join(self.change_texts())}", b, self.variant, self.aborted))

    def command_line(self) -> str:
        """The nearest `cbtui compare` command (it cannot say the requests typed in or the knobs turned)."""
        forks = " ".join(f"--fork {text}" for text in self.change_texts())
        return f"cbtui compare {self.scenario.name} {forks}"


@dataclass(frozen=True)
class AbortingVariant(Variant):
    """A run of the fork: its engine aborts the requests the dashboard aborted, before the same steps."""

    aborted: tuple[tuple[int, int], ...] = ()

    def build_engine(self, **overrides):
        engine = super().build_engine(**overrides)
        return AbortsAtSteps(engine, self.aborted) if self.aborted else engine


class AbortsAtSteps:
    """An engine that aborts given requests before given steps (Engine.abort, as `x` did)."""

    def __init__(self, engine, aborted: tuple[tuple[int, int], ...]):
        self.engine = engine
        self.due: dict[int, list[int]] = {}
        for step, request_id in aborted:
            self.due.setdefault(step, []).append(request_id)

    def step(self):
        for request_id in self.due.pop(self.engine.step_index, []):
            self.engine.abort(request_id)
        return self.engine.step()

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def save_plan(plan: ForkPlan) -> Path:
    """The plan in a file only this user can read, for the compare view's process."""
    handle, name = tempfile.mkstemp(prefix="cbtui-fork-", suffix=".pickle")
    with os.fdopen(handle, "wb") as file:
        pickle.dump(plan, file)
    return Path(name)


def error_file(plan_path: Path) -> Path:
    """Where the compare view's process writes why it could not open (one line)."""
    return plan_path.with_name(plan_path.name + ".err")


def load_plan(path: Path) -> ForkPlan:
    with path.open("rb") as file:
        plan = pickle.load(file)  # written by save_plan in the dashboard's process, for this one alone
    if not isinstance(plan, ForkPlan):
        raise ValueError(f"{path}: not a fork plan")
    return plan
