"""An app fed by an EngineController: what the dashboard and `cbtui compare` share.

The controller's callbacks run on the engine thread. `_to_inbox` puts what they hand over (records,
or a pair of them, and status changes) in an inbox and posts one `InboxReady` message, not one per
record, so a fast engine never floods the message queue. The app drains the inbox on its own
thread, follows the run's state (starting, running, finished, failed), and redraws at most
`MAX_FPS` times a second whatever the engine's pace; a status change draws at once.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from textual import on
from textual.app import App
from textual.command import CommandPalette
from textual.css.query import NoMatches
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer

from ..run.controller import MAX_SPEED, EngineController, EngineStatus
from ..widgets.command_palette import OnceCommandPalette

SPEEDS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, MAX_SPEED)  # steps per second for + and -
DEFAULT_SPEED = 4.0
MAX_FPS = 15  # enough to follow; leaves the CPU (and the GIL) to the engine and to keys


def speed_label(speed: float) -> str:
    return "max" if speed == MAX_SPEED else f"{speed:g}/s"


class InboxReady(Message):
    """The engine thread put something in the inbox (sent once until the inbox is drained)."""


class EngineFedApp(App[None]):
    """The inbox, the frame pacing and the run state of an app whose `controller` runs an engine.

    A subclass builds `self.controller` with `_to_inbox` behind its callbacks, takes what a step
    hands over in `_take_step`, draws in `_draw_panels`, says whether it shows a past step and
    how it goes back to the newest (`_showing_past`, `_go_live`), and names in `STATEFUL_ACTIONS`
    the actions its `check_action` greys out as the run goes.
    """

    # Actions whose availability changes with the run; the footer greys them when they do nothing.
    STATEFUL_ACTIONS: tuple[str, ...] = ()

    paused: reactive[bool] = reactive(False, init=False)
    speed: reactive[float] = reactive(DEFAULT_SPEED, init=False)

    controller: EngineController

    def __init__(self, paused: bool = False, speed: float | None = None):
        super().__init__()
        self.engine_state = "starting"  # running / finished / failed, as the engine thread reports
        self.error: str | None = None
        self._inbox: list[Any] = []
        self._inbox_lock = threading.Lock()
        self._last_draw = 0.0
        self._draw_timer: Timer | None = None
        self._binding_state: tuple[bool | None, ...] | None = None
        self.set_reactive(EngineFedApp.paused, paused)
        self.start_speed = DEFAULT_SPEED if speed is None else float(speed)  # the pace a run (re)starts at
        self.set_reactive(EngineFedApp.speed, self.start_speed)

    def action_command_palette(self) -> None:
        """Textual's palette, closed once however fast the keys come (widgets/command_palette.py)."""
        if self.use_command_palette and not isinstance(self.screen, CommandPalette):
            self.push_screen(OnceCommandPalette(id="--command-palette"))

    # -- from the engine thread --------------------------------------------------------------
    def _to_inbox(self, event: Any) -> None:
        with self._inbox_lock:
            self._inbox.append(event)
            first = len(self._inbox) == 1
        if first:
            self.post_message(InboxReady())

    # -- on the app's thread -----------------------------------------------------------------
    @on(InboxReady)
    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            events, self._inbox = self._inbox, []
        status_changed = False
        for event in events:
            if isinstance(event, EngineStatus):
                status_changed = True
                self._take_status(event)
            else:
                if self.engine_state == "finished":  # work came in after the end (a live run's new
                    self.engine_state = "running"  # requests: cbtui api, the add key): it runs again
                    status_changed = True
                self._take_step(event)
        self._after_drain()
        if status_changed:  # rare and important (failed, finished, restarted): draw at once
            self._draw()
        else:
            self._schedule_draw()
        self._refresh_bindings_if_changed()

    def _take_step(self, step: Any) -> None:
        """What the controller handed over for one step (a StepRecord, or what the engine makes)."""
        raise NotImplementedError

    def _take_status(self, status: EngineStatus) -> None:
        """A subclass extends this for what it keeps per run (cleared on "started")."""
        if status.kind == "started":
            self.engine_state, self.error = "running", None
        elif status.kind == "finished":
            self.engine_state = "finished"
        elif status.kind == "failed":
            self.engine_state, self.error = "failed", status.message

    def _after_drain(self) -> None:
        """After a batch of the inbox, before the frame."""

    def run_state(self) -> str:
        if self.engine_state in ("failed", "finished", "starting"):
            return self.engine_state
        return "paused" if self.paused else "running"

    def _can_step(self) -> bool:
        return self.engine_state in ("running", "starting")

    # -- frames -----------------------------------------------------------------------------
    def _schedule_draw(self) -> None:
        """Draw now, or at the next frame slot if the last frame was too recent."""
        wait = self._last_draw + 1 / MAX_FPS - time.monotonic()
        if wait <= 0:
            self._draw()
        elif self._draw_timer is None:
            self._draw_timer = self.set_timer(wait, self._frame_due)

    def _frame_due(self) -> None:
        self._draw_timer = None
        self._draw()

    def _draw(self) -> None:
        if self._draw_timer is not None:  # this frame shows what the pending one would: two would break the pace
            self._draw_timer.stop()
            self._draw_timer = None
        self._last_draw = time.monotonic()
        with contextlib.suppress(NoMatches):  # a frame due while the app is closing: the panels are gone
            self._draw_panels()

    def _draw_panels(self) -> None:
        raise NotImplementedError

    def _refresh_bindings_if_changed(self) -> None:
        """The footer rebuilds itself on refresh_bindings; do it only when a key's state changed."""
        state = tuple(self.check_action(action, ()) for action in self.STATEFUL_ACTIONS)
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    # -- speed and pause ---------------------------------------------------------------------
    def _showing_past(self) -> bool:
        """Whether the screen shows a step older than the newest (history, while paused)."""
        raise NotImplementedError

    def _go_live(self) -> None:
        """Back to the newest step."""
        raise NotImplementedError

    def action_toggle_pause(self) -> None:
        if self._showing_past():  # back to the newest step, running
            self._go_live()
            self.paused = False
        else:
            self.paused = not self.paused
        (self.controller.pause if self.paused else self.controller.resume)()
        self._draw()

    def action_step_once(self) -> None:
        self._go_live()
        self.controller.step_once()
        self._draw()

    def watch_paused(self) -> None:
        self._after_change()

    def watch_speed(self) -> None:
        self._after_change()

    def _after_change(self) -> None:
        self._refresh_bindings_if_changed()
        self._draw()

    def _restart_at_start_speed(self) -> None:
        """A restart runs at the pace the app opened with, not the one + left it at (at 64/s a restart
        ran all 55 steps of mixed_load in under a second)."""
        self.speed = self.start_speed
        self.controller.set_speed(self.start_speed)
        self.controller.restart()

    def action_faster(self) -> None:
        self.speed = next((s for s in SPEEDS if s > self.speed), SPEEDS[-1])
        self.controller.set_speed(self.speed)

    def action_slower(self) -> None:
        self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), SPEEDS[0])
        self.controller.set_speed(self.speed)
