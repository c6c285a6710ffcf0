"""The engine thread: the one owner of the engine, driven by commands, emitting StepRecords.

The UI never touches the engine. It sends commands (pause, resume, step once, speed, restart,
stop) through a thread-safe queue and receives records and status changes through callbacks
that run on this thread (the app turns them into messages). Between steps the thread waits on
an Event, so a paused engine costs nothing and a command wakes it at once; the stop flag is
checked before every step, so quitting never waits for more than the step in flight.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from engine.records import RunHeader, StepRecord

from .breakpoints import Breakpoints

MAX_SPEED = float("inf")  # steps per second: as fast as the engine goes


Step = TypeVar("Step")  # what one step hands over: a StepRecord, or cbtui compare's PairStep
Step_co = TypeVar("Step_co", covariant=True)


class Steppable(Protocol[Step_co]):
    """What the controller drives: a step at a time (None: nothing to hand over yet), and the run's header."""

    def step(self) -> Step_co | None: ...

    def has_unfinished(self) -> bool: ...

    def header(self) -> RunHeader: ...


class SteppableEngine(Steppable[StepRecord], Protocol):
    """An Engine, or a recorded run (engine.records.recording.RecordedRun): records, and the run's header."""


@dataclass(frozen=True)
class EngineStatus:
    """What the thread reports besides records: finished, failed, or (re)started."""

    # "started", "finished", "failed", "breakpoint" (paused on the step just sent)
    kind: str
    message: str = ""


@dataclass(frozen=True)
class _Command:
    name: str  # "pause", "resume", "step", "speed", "restart", "call"
    value: float | None = None
    call: Callable[[Any], Any] | None = None  # "call": run on the engine between steps
    answer: Future | None = None  # "call": gets the call's result or its exception


class EngineController(Generic[Step]):
    """Runs `engine.step()` on a background thread at a given speed, under commands."""

    def __init__(self, engine: Steppable[Step], on_record: Callable[[Step], None],
                 on_status: Callable[[EngineStatus], None],
                 rebuild: Callable[[], Steppable[Step]] | None = None,
                 paused: bool = False, speed: float = 4.0, max_steps: int | None = None,
                 breakpoints: Breakpoints | None = None):
        self._engine = engine
        self.breakpoints = breakpoints if breakpoints is not None else Breakpoints()
        self._on_record = on_record
        self._on_status = on_status
        self._rebuild = rebuild
        self._paused = paused
        self._speed = speed
        self._max_steps = max_steps
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._steps_taken = 0
        self._pending_steps = 0
        self._failed = False
        self._thread = threading.Thread(target=self._run, name="cbtui-engine", daemon=True)

    # -- the UI side --------------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def paused(self) -> bool:
        """Whether the engine thread has taken a pause command (not just been sent one)."""
        return self._paused

    def start(self) -> None:
        self._thread.start()

    def pause(self) -> None:
        self._send(_Command("pause"))

    def resume(self) -> None:
        self._send(_Command("resume"))

    def step_once(self) -> None:
        self._send(_Command("step"))

    def set_speed(self, steps_per_second: float) -> None:
        self._send(_Command("speed", steps_per_second))

    def restart(self) -> None:
        self._send(_Command("restart"))

    def between_steps(self, call: Callable[[Any], Any]) -> Future:
        """Runs `call(engine)` on the engine thread before the next step (never during one), and
        returns a Future holding its result or exception. This is how anything outside the thread
        (the dashboard's keys, an HTTP server) changes a live run: add a request, turn a knob. A
        call sent after the thread has stopped fails its Future with RuntimeError at once."""
        answer: Future = Future()
        if self._stop.is_set():
            answer.set_exception(RuntimeError("the engine thread has stopped"))
            return answer
        self._send(_Command("call", call=call, answer=answer))
        return answer

    def stop(self, timeout: float = 2.0) -> None:
        """Stops the thread; waits at most `timeout` for the step in flight (it is a daemon)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._refuse_queued_calls()

    def close_engine(self) -> None:
        """After stop: ends the engine's own processes (a sharded engine's workers), for a process
        that opens another engine next (the lessons, one after another). Refused while the thread runs."""
        if self._thread.is_alive():
            raise RuntimeError("stop the engine thread before closing its engine")
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()

    def _refuse_queued_calls(self) -> None:
        """Calls still queued when the thread stops fail rather than leave their callers waiting."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd.answer is not None and not cmd.answer.done():
                cmd.answer.set_exception(RuntimeError("the engine thread has stopped"))

    def _send(self, command: _Command) -> None:
        self._commands.put(command)
        self._wake.set()

    # -- the engine thread --------------------------------------------------------------------
    def _run(self) -> None:
        # The first step runs at once, paused or not, so the dashboard opens on a real record.
        self._on_status(EngineStatus("started"))
        self._step()
        next_due = time.perf_counter()
        while not self._stop.is_set():
            self._wake.clear()
            if self._apply_commands():
                next_due = time.perf_counter()
            if self._stop.is_set():
                break
            if not self._can_step():
                self._wake.wait()
                continue
            if self._pending_steps:
                self._pending_steps -= 1
                self._step()
                continue
            if self._paused:
                self._wake.wait()
                continue
            delay = next_due - time.perf_counter()
            if delay > 0 and self._wake.wait(delay):
                continue  # a command came in; handle it before stepping
            if delay <= 0:
                time.sleep(0.001)  # at full speed: hand the GIL to the UI thread between steps
            next_due = max(next_due + self._interval(), time.perf_counter() - self._interval())
            self._step()
        self._refuse_queued_calls()

    def _interval(self) -> float:
        return 0.0 if self._speed == MAX_SPEED else 1.0 / self._speed

    def _can_step(self) -> bool:
        if self._failed:
            return False
        if self._max_steps is not None and self._steps_taken >= self._max_steps:
            return False
        return self._engine.has_unfinished()

    def _apply_commands(self) -> bool:
        """Applies queued commands; True when the pacing should restart from now."""
        reset_pace = False
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return reset_pace
            if cmd.name == "pause":
                self._paused, self._pending_steps = True, 0
            elif cmd.name == "resume":
                self._paused, reset_pace = False, True
            elif cmd.name == "step":
                self._pending_steps += 1
            elif cmd.name == "speed" and cmd.value is not None:  # set_speed always sends a value
                self._speed, reset_pace = float(cmd.value), True
            elif cmd.name == "restart":
                self._restart()
                reset_pace = True
            elif cmd.name == "call" and cmd.call is not None and cmd.answer is not None:
                self._call(cmd.call, cmd.answer)

    def _call(self, call: Callable[[Any], Any], answer: Future) -> None:
        try:
            result = call(self._engine)
        except Exception as exc:  # handed to the caller, who says it in one line; the run goes on
            answer.set_exception(exc)
            return
        answer.set_result(result)

    def _restart(self) -> None:
        if self._rebuild is None:
            return
        self._pending_steps = 0
        close = getattr(self._engine, "close", None)
        if close is not None:
            close()  # a sharded engine's workers stop before the new engine starts its own
        try:
            self._engine = self._rebuild()
        except Exception as exc:  # a scenario that cannot be rebuilt: report it, keep running
            self._fail(exc)
            return
        self._failed = False
        self._steps_taken = 0
        self.breakpoints.restart()
        self._on_status(EngineStatus("started"))
        self._step()

    def _step(self) -> None:
        if not self._can_step():
            return
        try:
            record = self._engine.step()
        except Exception as exc:  # the UI shows the error and stays alive
            self._fail(exc)
            return
        self._steps_taken += 1
        if self._stop.is_set():
            return
        if record is not None:  # an overlapped engine hands its first record over one call late
            self._on_record(record)
            hit = self.breakpoints.check(record)
            if hit is not None:  # checked here, on this thread: the run stops on this very step
                self._paused, self._pending_steps = True, 0
                self._on_status(EngineStatus("breakpoint", hit))
        if not self._can_step() and not self._failed:
            self._on_status(EngineStatus("finished"))

    def _fail(self, exc: BaseException) -> None:
        self._failed = True
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        self._on_status(EngineStatus("failed", detail))
