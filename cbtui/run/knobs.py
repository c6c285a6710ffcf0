"""The `k` panel's knobs: every engine setting with its value now, the live ones that may be turned
between two steps, and a turn made through Engine.reconfigure.

Which settings are live, and why the others are fixed, is written once in the config fields'
metadata (engine/live_changes.py reads it); this module only lists it for the panel. The calls that
read or change the engine run on the engine thread (EngineController.between_steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.config import setting_for
from engine.live_changes import why_fixed


@dataclass(frozen=True)
class Knob:
    """One setting as the panel lists it."""

    name: str  # the flat name (an [engine] key, --at's KEY)
    value: str  # in effect at the step just run
    fixed_because: str | None  # None: live, it may change between steps
    pending: str | None = None  # a change waiting for its step: "96 at step 21"
    help: str = ""


@dataclass(frozen=True)
class KnobTurned:
    """A change the engine took: it applies from `step` on (the next step when it was made)."""

    name: str
    old: Any
    new: Any
    step: int

    def line(self) -> str:
        return f"{self.name} {shown(self.old)} -> {shown(self.new)} from step {self.step}"


def shown(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def knobs(engine) -> list[Knob]:
    """Every setting of the engine's config, live ones first (each group in the config's order)."""
    pending: dict[str, str] = {}
    for step, changes in sorted(engine.changes.pending.items()):
        for name, value in changes.items():
            pending.setdefault(name, f"{shown(value)} at step {step}")
    rows = [Knob(name, shown(value), why_fixed(name), pending.get(name), setting_for(name).help)
            for name, value in engine.config.to_flat().items()]
    return sorted(rows, key=lambda knob: knob.fixed_because is not None)


def turn(engine, name: str, value: Any) -> KnobTurned:
    """Changes `name` from the engine's next step on; ValueError (one line), and nothing changes, for a
    value out of range or a combination the config refuses."""
    old = engine.config.value(name)
    step = engine.step_index
    engine.reconfigure(**{name: value})
    return KnobTurned(name, old, value, step)
