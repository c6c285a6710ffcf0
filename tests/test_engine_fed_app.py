"""The part of an app fed by an EngineController that the dashboard and `cbtui compare` share:
the inbox, the frame pacing and the run state (cbtui/apps/engine_fed.py)."""

from __future__ import annotations

import asyncio
import threading
import time

from dashboard_helpers import wait_until
from textual import on
from textual.app import ComposeResult
from textual.widgets import Static

from cbtui.apps.compare import CompareApp
from cbtui.apps.dashboard import DashboardApp
from cbtui.apps.engine_fed import MAX_FPS, EngineFedApp, InboxReady
from cbtui.run.controller import EngineStatus


class CountingApp(EngineFedApp):
    """Takes plain numbers for steps; notes how many it had taken at each frame."""

    def __init__(self):
        super().__init__(paused=False)
        self.taken: list[int] = []
        self.frames: list[int] = []  # len(taken) at each frame
        self.messages = 0
        self.past = False  # whether the screen shows an older step than the newest

    def compose(self) -> ComposeResult:
        yield Static(id="view")

    def _take_step(self, step: int) -> None:
        self.taken.append(step)

    def _draw_panels(self) -> None:
        self.frames.append(len(self.taken))
        self.query_one(Static).update(str(len(self.taken)))

    def _showing_past(self) -> bool:
        return self.past

    def _go_live(self) -> None:
        self.past = False

    @on(InboxReady)
    def _count(self) -> None:
        self.messages += 1


def run(coro):
    return asyncio.run(coro)


def test_both_apps_are_fed_by_the_shared_piece():
    assert issubclass(DashboardApp, EngineFedApp) and issubclass(CompareApp, EngineFedApp)


def test_one_message_per_batch_and_every_step_taken_in_order():
    async def scenario():
        app = CountingApp()
        async with app.run_test() as pilot:
            await pilot.pause()
            for i in range(100):  # no await between: the app's thread cannot drain in between
                app._to_inbox(i)
            await wait_until(pilot, lambda: len(app.taken) == 100)
            assert app.messages == 1
            assert app.taken == list(range(100))
    run(scenario())


def test_frames_are_paced_and_the_last_one_shows_the_newest_step():
    """A fast engine thread: at most MAX_FPS frames a second, and a frame after the last step."""
    async def scenario():
        app = CountingApp()
        async with app.run_test() as pilot:
            await pilot.pause()
            start_frames = len(app.frames)

            def engine_thread():
                for i in range(300):
                    app._to_inbox(i)
                    time.sleep(0.002)

            started = time.monotonic()
            thread = threading.Thread(target=engine_thread)
            thread.start()
            await wait_until(pilot, lambda: not thread.is_alive() and app.frames and app.frames[-1] == 300)
            elapsed = time.monotonic() - started
            frames = len(app.frames) - start_frames
            assert app.messages > 2 * (elapsed * MAX_FPS + 2)  # drained often: pacing, not batching, held frames
            assert frames <= elapsed * MAX_FPS + 2, (frames, elapsed)
    run(scenario())


def test_a_frame_drawn_before_a_pending_one_is_due_takes_its_place():
    """A step inside the frame slot sets a timer; if the app was busy past the slot, the next step
    draws at once, and the timer must not draw the same step again a moment later."""
    async def scenario():
        app = CountingApp()
        async with app.run_test() as pilot:
            await pilot.pause()
            app._last_draw = time.monotonic()  # a frame just now: the next step waits for its slot
            app._schedule_draw()
            assert app._draw_timer is not None
            app._last_draw -= 1.0  # the app was busy past the slot: the next step draws at once
            app._schedule_draw()
            frames = len(app.frames)
            await pilot.pause(3 / MAX_FPS)  # well past the pending frame's time
            assert len(app.frames) == frames
    run(scenario())


def test_a_status_change_draws_at_once_a_step_waits_for_its_frame_slot():
    async def scenario():
        app = CountingApp()
        async with app.run_test() as pilot:
            await pilot.pause()
            app._last_draw = time.monotonic() + 3600  # the last frame's slot lasts an hour: no race with the clock
            frames = len(app.frames)
            app._to_inbox(1)
            await wait_until(pilot, lambda: app.taken == [1])
            assert len(app.frames) == frames and app._draw_timer is not None
            app._to_inbox(EngineStatus("finished"))
            await wait_until(pilot, lambda: app.engine_state == "finished")
            assert app.frames[frames:] == [1]
    run(scenario())


def test_run_state_follows_the_engine_thread_and_the_pause_key():
    async def scenario():
        app = CountingApp()
        async with app.run_test() as pilot:
            assert app.run_state() == "starting" and app._can_step()
            app._to_inbox(EngineStatus("started"))
            await wait_until(pilot, lambda: app.engine_state == "running")
            assert app.run_state() == "running"
            app.paused = True
            assert app.run_state() == "paused" and app._can_step()
            app._to_inbox(EngineStatus("failed", "RuntimeError: boom"))
            await wait_until(pilot, lambda: app.engine_state == "failed")
            assert app.error == "RuntimeError: boom" and app.run_state() == "failed" and not app._can_step()
            app._to_inbox(EngineStatus("started"))  # a restart clears the error
            await wait_until(pilot, lambda: app.engine_state == "running")
            assert app.error is None
            app._to_inbox(EngineStatus("finished"))
            await wait_until(pilot, lambda: app.engine_state == "finished")
            assert app.run_state() == "finished" and not app._can_step()
    run(scenario())


class Commands:
    """Stands in for the EngineController: notes the commands sent."""

    def __init__(self):
        self.sent: list[str] = []

    def __getattr__(self, name):
        return lambda *args: self.sent.append(name)


def test_space_from_a_past_step_goes_back_to_the_newest_and_runs():
    async def scenario():
        app = CountingApp()
        app.controller = Commands()
        async with app.run_test():
            app.action_toggle_pause()
            assert app.paused and app.controller.sent == ["pause"]
            app.past = True
            app.action_toggle_pause()
            assert not app.past and not app.paused and app.controller.sent == ["pause", "resume"]
            app.paused, app.past = True, True
            app.action_step_once()
            assert not app.past and app.paused and app.controller.sent[-1] == "step_once"
    run(scenario())
