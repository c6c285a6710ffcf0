"""The engine thread obeys its commands, reports failures, and stops promptly."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from cbtui.run.controller import MAX_SPEED, EngineController
from engine.records import StepRecord


class CountingEngine:
    """A stand-in engine: each step returns a record-like object with its index."""

    def __init__(self, total: int = 1000, fail_at: int | None = None, step_seconds: float = 0.0):
        self.total, self.fail_at, self.step_seconds = total, fail_at, step_seconds
        self.steps = 0

    def has_unfinished(self) -> bool:
        return self.steps < self.total

    def step(self):
        if self.steps == self.fail_at:
            raise ValueError("scheduler bug")
        time.sleep(self.step_seconds)
        record = StepRecord.__new__(StepRecord)
        record.step = self.steps
        self.steps += 1
        return record


class Recorder:
    def __init__(self):
        self.events: queue.Queue = queue.Queue()

    def record(self, rec):
        self.events.put(("record", rec.step))

    def status(self, status):
        self.events.put((status.kind, status.message))

    def next(self, timeout: float = 2.0):
        return self.events.get(timeout=timeout)

    def quiet_for(self, seconds: float) -> bool:
        try:
            self.events.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


def start(engine, **kwargs):
    rec = Recorder()
    ctl = EngineController(engine, rec.record, rec.status, **kwargs)
    ctl.start()
    return ctl, rec


def test_paused_runs_the_first_step_then_only_steps_on_command():
    ctl, rec = start(CountingEngine(), paused=True)
    try:
        assert rec.next() == ("started", "")
        assert rec.next() == ("record", 0)
        assert rec.quiet_for(0.2)
        ctl.step_once()
        ctl.step_once()
        assert rec.next() == ("record", 1)
        assert rec.next() == ("record", 2)
        assert rec.quiet_for(0.2)
    finally:
        ctl.stop()
    assert not ctl.thread.is_alive()


def test_speed_paces_steps_and_pause_stops_them():
    ctl, rec = start(CountingEngine(), speed=20.0)
    try:
        rec.next()
        begin = time.perf_counter()
        for _ in range(6):
            assert rec.next()[0] == "record"
        elapsed = time.perf_counter() - begin
        assert 0.2 <= elapsed <= 1.0  # about 5 intervals of 50 ms
        ctl.pause()
        time.sleep(0.1)
        while not rec.events.empty():
            rec.events.get()
        assert rec.quiet_for(0.2)
        ctl.set_speed(MAX_SPEED)
        ctl.resume()
        for _ in range(50):
            assert rec.next(0.5)[0] == "record"
    finally:
        ctl.stop()


def test_exception_reports_failed_and_restart_recovers():
    engines = [CountingEngine(fail_at=1), CountingEngine()]
    ctl, rec = start(engines[0], speed=MAX_SPEED, rebuild=lambda: engines.pop())
    try:
        assert rec.next() == ("started", "")
        assert rec.next() == ("record", 0)
        kind, message = rec.next()
        assert kind == "failed" and "ValueError: scheduler bug" in message
        assert ctl.thread.is_alive()
        assert rec.quiet_for(0.1)
        ctl.pause()
        ctl.restart()
        assert rec.next() == ("started", "")
        assert rec.next() == ("record", 0)
    finally:
        ctl.stop()


def test_max_steps_then_finished():
    ctl, rec = start(CountingEngine(), speed=MAX_SPEED, max_steps=3)
    try:
        events = [rec.next() for _ in range(5)]
        assert events == [("started", ""), ("record", 0), ("record", 1), ("record", 2), ("finished", "")]
        assert rec.quiet_for(0.1)
    finally:
        ctl.stop()


@pytest.mark.parametrize("paused", [True, False])
def test_stop_is_prompt_paused_or_running(paused):
    engine = CountingEngine(step_seconds=0.01)
    ctl, rec = start(engine, paused=paused, speed=1.0)
    rec.next()
    rec.next()
    begin = time.perf_counter()
    ctl.stop()
    assert time.perf_counter() - begin < 0.5
    assert not ctl.thread.is_alive() and ctl.thread not in threading.enumerate()
    # Stopped means stopped: commands sent afterwards step nothing and report nothing.
    steps = engine.steps
    ctl.step_once()
    ctl.resume()
    ctl.set_speed(MAX_SPEED)
    assert rec.quiet_for(0.2)
    assert engine.steps == steps


def test_between_steps_runs_on_the_engine_thread_and_answers():
    engine = CountingEngine(total=3)
    ctl, rec = start(engine, paused=True)
    assert rec.next() == ("started", "")
    assert rec.next() == ("record", 0)
    where = ctl.between_steps(lambda eng: (threading.current_thread().name, eng.steps)).result(timeout=2)
    assert where == ("cbtui-engine", 1)  # between steps 0 and 1, on the engine's own thread
    failing = ctl.between_steps(lambda eng: int("x"))
    with pytest.raises(ValueError):
        failing.result(timeout=2)
    ctl.step_once()  # the run went on after the failed call
    assert rec.next() == ("record", 1)
    ctl.stop()


def test_between_steps_can_give_a_finished_run_more_work():
    engine = CountingEngine(total=1)
    ctl, rec = start(engine)
    assert rec.next() == ("started", "")
    assert rec.next() == ("record", 0)
    assert rec.next() == ("finished", "")

    def more(eng):
        eng.total += 1
    ctl.between_steps(more).result(timeout=2)
    assert rec.next() == ("record", 1)
    ctl.stop()


def test_between_steps_after_stop_fails_at_once():
    ctl, rec = start(CountingEngine(total=5), paused=True)
    ctl.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        ctl.between_steps(lambda eng: 1).result(timeout=1)
