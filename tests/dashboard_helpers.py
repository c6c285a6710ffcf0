"""Shared pieces for the dashboard tests: a seeded scenario on the CPU, or a committed recording of
one (tests/data), with the parts that depend on the clock or the machine (step wall time, process
RSS) held fixed."""

from __future__ import annotations

import time
from pathlib import Path

from cbtui.apps.dashboard import DashboardApp
from engine.profiling.gpu_memory import FakeProbe, MemoryReading
from engine.records.recording import RecordedRun, load_recording
from scenarios import load_scenario

DATA = Path(__file__).with_name("data")

FIXED_RSS = 512 * 1024 * 1024
NO_GPU = MemoryReading(rss_bytes=FIXED_RSS, note="no GPU: NVML Shared Library Not Found", source="rss")


class SteadyEngine:
    """Wraps a real engine; records get a fixed wall time and RSS so screens are reproducible."""

    def __init__(self, engine, wall_time_s: float = 0.01):
        self._engine = engine
        self._wall = wall_time_s

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def step(self):
        record = self._engine.step()
        record.wall_time_s = self._wall
        record.memory.rss_bytes = FIXED_RSS
        return record


class FailingEngine(SteadyEngine):
    """Raises on the given step, like an engine that hits a bug mid-run."""

    def __init__(self, engine, fail_at: int):
        super().__init__(engine)
        self._fail_at = fail_at

    def step(self):
        if self._engine.step_index == self._fail_at:
            raise RuntimeError(f"boom at step {self._fail_at}")
        return super().step()


def build_engine(name: str = "mixed_load"):
    return SteadyEngine(load_scenario(name).build_engine(device="cpu"))


def make_app(paused: bool = True, probe=None, engine=None, scenario_name: str = "mixed_load",
             **kwargs) -> DashboardApp:
    scenario = load_scenario(scenario_name)
    engine = engine or SteadyEngine(scenario.build_engine(device="cpu"))
    kwargs.setdefault("memory_poll_s", 3600.0)  # one reading at start: screens do not drift with time
    return DashboardApp(scenario, engine, rebuild=lambda: SteadyEngine(scenario.build_engine(device="cpu")),
                        paused=paused, probe=probe or FakeProbe([NO_GPU]), **kwargs)


def make_replay_app(name: str = "mixed_load", paused: bool = True, probe=None, **kwargs) -> DashboardApp:
    """The dashboard replaying tests/data/NAME.jsonl, as `cbtui replay` does: no engine runs, so
    a screen changes only when the recording or the dashboard does. Made with
    `python -m cbtui scenario NAME --json --steps N > tests/data/NAME.jsonl`."""
    recording = load_recording(DATA / f"{name}.jsonl")
    records = recording.records

    def replay():  # a fresh run each time; SteadyEngine sets the same wall time and RSS as live tests
        return SteadyEngine(RecordedRun(records, recording.header))

    kwargs.setdefault("memory_poll_s", 3600.0)
    return DashboardApp(recording, replay(), rebuild=replay, paused=paused, probe=probe or FakeProbe([NO_GPU]),
                        recorded=True, **kwargs)


async def wait_until(pilot, condition, timeout: float = 10.0) -> None:
    """Lets the app and the engine thread run until `condition()` holds (fails after timeout)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.02)


def header_text(app) -> str:
    return str(app.query_one("#header").render())


def shown_step(app) -> int | None:
    record = app.history.current()
    return None if record is None else record.step


def rendered_lines(widget) -> list[str]:
    """The widget's text as drawn on screen, line by line (what a person sees, cut where it is cut)."""
    return ["".join(segment.text for segment in widget.render_line(y)) for y in range(widget.size.height)]
