"""The dashboard driven by keys, as a person would, through Textual's Pilot."""

from __future__ import annotations

import asyncio
import re

import pytest
from dashboard_helpers import FailingEngine, header_text, make_app, make_replay_app, shown_step, wait_until

from cbtui.widgets.error_panel import ErrorPanel
from cbtui.widgets.help_screen import HelpScreen
from cbtui.widgets.mask import MaskCanvas, mask_strips
from cbtui.widgets.mask_legend import MaskLegend, scale_text
from scenarios import load_scenario


def header_step(app) -> int:
    match = re.search(r"Step (\d+)", header_text(app))
    return int(match.group(1)) if match else -1


def run(coro):
    return asyncio.run(coro)


def test_paused_start_then_three_steps_then_back_then_resume_then_quit():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            # Frames are capped, so the header follows a new record within one frame.
            await wait_until(pilot, lambda: "Step 0" in header_text(app))
            assert shown_step(app) == 0 and "paused" in header_text(app)
            for expected in (1, 2, 3):
                await pilot.press("n")
                await wait_until(pilot, lambda expected=expected: f"Step {expected}" in header_text(app))
            assert "Step 3" in header_text(app) and shown_step(app) == 3
            await pilot.pause(0.3)
            assert shown_step(app) == 3, "a paused engine must not step on its own"

            await pilot.press("left")
            assert shown_step(app) == 2
            assert app.history.current().step == 2
            assert "Step 2" in header_text(app) and "history" in header_text(app)

            await pilot.press("space")
            assert not app.paused and app.history.live
            await wait_until(pilot, lambda: header_step(app) >= 4)
            assert "running" in header_text(app)

            thread = app.controller.thread
            assert thread.is_alive()
            await pilot.press("q")
        assert not thread.is_alive()
    run(scenario())


def test_right_arrow_walks_history_then_steps_at_the_newest():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("n", "n")
            await wait_until(pilot, lambda: shown_step(app) == 2)
            await pilot.press("left", "left")
            assert shown_step(app) == 0
            assert app.check_action("history_back", ()) is None  # nothing older: greyed out
            await pilot.press("right")
            assert shown_step(app) == 1 and not app.history.live
            await pilot.press("right")
            assert shown_step(app) == 2 and app.history.live
            await pilot.press("right")  # at the newest step: runs one
            await wait_until(pilot, lambda: shown_step(app) == 3)
    run(scenario())


def test_keys_that_do_nothing_are_greyed_out():
    async def scenario():
        app = make_app(paused=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) is not None)
            # Running: stepping needs a pause first (← pauses by itself).
            assert app.check_action("step_once", ()) is None
            assert app.check_action("toggle_pause", ()) is True
            assert app.check_action("zoom", ()) is None  # nothing selected
            await pilot.press("space")
            assert app.check_action("step_once", ()) is True
            for _ in range(10):
                await pilot.press("plus")
            assert app.speed == float("inf") and "max" in str(app._header_info(None))
            assert app.check_action("faster", ()) is None
            assert app.check_action("slower", ()) is True
    run(scenario())


def test_selecting_a_request_highlights_it_and_zoom_shows_only_its_rows():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            assert app.selected is None
            await pilot.press("down")  # first press shows the cursor on the first request
            assert app.selected == 0
            await pilot.press("z")
            assert app.zoomed
            canvas_items = app.query_one("#mask")._items
            assert canvas_items and all(i.request_id == 0 for i in canvas_items)
            await pilot.press("escape")
            assert app.selected is None and not app.zoomed
    run(scenario())


def test_engine_exception_shows_error_panel_and_ui_stays_alive():
    async def scenario():
        sc = load_scenario("mixed_load")
        app = make_app(paused=False, engine=FailingEngine(sc.build_engine(device="cpu"), fail_at=2))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.engine_state == "failed")
            panel = app.query_one(ErrorPanel)
            assert panel.display and "boom at step 2" in str(panel.render())
            assert "failed" in header_text(app)
            await pilot.press("left")  # history still browsable
            assert shown_step(app) == 0
            await pilot.press("r")  # restart rebuilds a healthy engine
            await wait_until(pilot, lambda: app.engine_state == "running" and shown_step(app) is not None)
            assert not panel.display
    run(scenario())


def test_help_shows_the_scenario_question():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = " ".join(str(w.render()) for w in app.screen.query("Static"))
            assert "What is continuous batching?" in text and "Mixed load" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
    run(scenario())


def test_restart_starts_again_from_step_zero():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("n", "n")
            await wait_until(pilot, lambda: shown_step(app) == 2)
            await pilot.press("r")
            await wait_until(pilot, lambda: shown_step(app) == 0)
            assert len(app.history) == 1 and app.paused
    run(scenario())


@pytest.mark.parametrize("size,small", [((50, 15), True), ((80, 24), False)])
def test_too_small_terminal_says_so(size, small):
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=size) as pilot:
            await pilot.pause(0.1)
            assert app.query_one("#too-small").display == small
            assert app.query_one("#body").display == (not small)
    run(scenario())


def test_max_steps_stops_the_engine_and_reports_finished():
    async def scenario():
        app = make_app(paused=False, max_steps=3, speed=float("inf"))
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.engine_state == "finished")
            assert shown_step(app) == 2
            assert "finished" in header_text(app)
            assert app.check_action("step_once", ()) is None
    run(scenario())


def test_command_palette_offers_every_action_and_they_work():
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            commands = {c.title: c.callback for c in app.get_system_commands(app.screen)}
            for title in ("Pause / resume", "Step once", "Previous step", "Next step", "Faster", "Slower",
                          "Zoom mask", "Restart scenario", "Scenario help"):
                assert title in commands
            commands["Step once"]()
            await wait_until(pilot, lambda: shown_step(app) == 1)
            commands["Previous step"]()
            assert shown_step(app) == 0 and not app.history.live
    run(scenario())


def test_metrics_screen_follows_the_run_and_closes():
    from rich.console import Console

    from cbtui.widgets.metrics_screen import MetricsScreen
    from engine.profiling.sources import FunctionSource

    async def scenario():
        app = make_app(paused=True, memory_sources=[FunctionSource("fake", lambda: {"fake": 1 << 20})])
        async with app.run_test(size=(100, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            for _ in range(5):
                await pilot.press("n")
            await wait_until(pilot, lambda: shown_step(app) == 5)
            assert len(app.metrics.steps) == 6 and len(app.memory_profile.samples) == 6
            await pilot.press("m")
            assert isinstance(app.screen, MetricsScreen)
            console = Console(width=100, record=True, color_system=None)
            console.print(app.screen.query_one("#metrics-body").content)
            body = console.export_text()
            assert "steps 0–5" in body and "TTFT, steps" in body and "fake" in body  # the header's numbers
            # The header's tok/s (prefill + decode) is the figure the screen labels as such.
            header_rate = re.search(r"(\S+) total tok/s", header_text(app)).group(1)
            assert f"total {header_rate} tok/s (prefill + decode, the header's" in " ".join(body.split())
            # Memory by context: what the engine holds, and the contexts the app measures (the first
            # step may end before the app hears "started": it still counts).
            rows = {line[:14].strip(): line[14:].split() for line in body.splitlines()}
            memory = app.history.current().memory
            assert "Memory by context (DetailedMemoryProfiler)" in body
            assert rows["weights"] == [f"{memory.weight_bytes / 2**20:.1f}", "MiB"]
            assert rows["KV pool"] == [f"{memory.kv_pool_bytes / 2**20:.1f}", "MiB"]
            assert rows["engine steps"][0] == "6" and rows["records"][0] == "6"
            await pilot.press("escape")
            assert not isinstance(app.screen, MetricsScreen)
            await pilot.press("r")  # a restart starts the metrics afresh
            await wait_until(pilot, lambda: len(app.metrics.steps) == 1)
    run(scenario())


def test_the_mask_legend_gets_the_scale_of_the_canvas_once_it_is_sized():
    """The legend's scale line depends on the canvas size, which only layout gives. A step drawn
    while the canvas has no size (as at start-up, before the first layout; here held that way by a
    terminal too small for the panels) gets its scale line once the canvas is sized, and a resize
    redraws it at the new scale. (A replay: the test is about the drawing, not the engine.)"""
    def legend_scale(app) -> str:
        return str(app.query_one(MaskLegend).render()).split("\n")[1]

    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(40, 12)) as pilot:  # below the minimum: the panels are hidden
            await wait_until(pilot, lambda: shown_step(app) == 0)
            for target in range(1, 7):  # step 6 fills the budget: the mask is shrunk to fit
                await pilot.press("n")
                await wait_until(pilot, lambda target=target: shown_step(app) == target)
            canvas = app.query_one(MaskCanvas)
            assert canvas.size.area == 0 and legend_scale(app) == ""
            items = app.history.current().items
            scales = []
            for size in ((160, 48), (80, 24)):
                # Twice: DashboardApp.on_resize reads app.size before Textual updates it, so the
                # layout follows a resize one event late; a second event settles it.
                await pilot.resize_terminal(*size)
                await pilot.resize_terminal(*size)
                await wait_until(pilot, lambda: canvas.size.area > 0)
                await pilot.pause()
                width, height = canvas.size
                _, raster = mask_strips(items, width, height)  # the frame at this size, drawn apart
                assert raster.downsampled
                assert legend_scale(app) == scale_text(raster, half_blocks=True)
                scales.append(legend_scale(app))
            assert scales[0] != scales[1], scales  # a smaller panel packs more tokens in a cell
            await pilot.press("q")
    run(scenario())


@pytest.mark.parametrize("start,end", [((50, 15), (80, 24)), ((120, 40), (80, 24)), ((80, 24), (200, 50))],
                         ids=["small-to-80x24", "wide-to-80x24", "80x24-to-200x50"])
def test_one_resize_is_enough_for_the_layout(start, end):
    """The layout follows the new size at once, not one resize later (a shared tmux resizes often)."""
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=start) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.resize_terminal(*end)
            await pilot.pause(0.1)
            width, height = end
            assert app.screen.has_class("-too-small") == (width < 60 or height < 20)
            assert app.query_one("#too-small").display == (width < 60 or height < 20)
            assert app.screen.has_class("-compact") == (height < 36)
            assert app.screen.has_class("-narrow") == (width < 100)
            # the right column is laid out for the new width: the budget title is not cut
            side = app.query_one("#side")
            assert side.region.right <= width
    run(scenario())


def test_left_while_running_pauses_and_shows_the_step_before():
    """The palette says "pauses first": ← does so too, instead of nothing."""
    async def scenario():
        app = make_app(paused=False, speed=20.0)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: (shown_step(app) or 0) >= 3)
            await pilot.press("left")
            assert app.paused and not app.history.live
            shown = shown_step(app)
            await pilot.pause(0.3)  # a step already under way when the pause came may still arrive
            assert not app.history.live and shown_step(app) == shown, "paused: the view stays where ← put it"
            assert 1 <= app.history.position()[1] - app.history.position()[0] <= 2
            assert "paused" in header_text(app) and f"Step {shown}" in header_text(app)
    run(scenario())


def test_ctrl_p_enter_enter_pressed_together_runs_one_command_and_keeps_the_dashboard():
    """Sent as one burst (tmux send-keys C-p Enter Enter), both Enters reached the palette before it
    closed: it dismissed itself twice, and the second popped the last screen (ScreenStackError).
    Whether the Enters find the palette's list ready depends on the machine's pace, so the burst is
    sent twice: all three keys at once, then the two Enters at once into a palette known to be ready
    (which is what made the crash certain)."""
    from textual import events
    from textual.command import CommandList, CommandPalette

    from cbtui.widgets.breakpoint_screen import BreakpointScreen

    def burst(app, *keys):
        for key in keys:  # no wait between them: one read of the terminal
            event = events.Key(key, "\r" if key == "enter" else None)
            event.set_sender(app)
            app._driver.send_message(event)

    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            dashboard = app.screen
            burst(app, "ctrl+p", "enter", "enter")
            await pilot.pause(0.5)
            assert app.is_running and app.return_code is None and app.screen_stack[0] is dashboard
            while app.screen is not dashboard:  # a command's screen, or the palette if its list came late
                await pilot.press("escape")
            await pilot.press("ctrl+p")
            await wait_until(pilot, lambda: CommandPalette.is_open(app)
                             and app.screen.query_one(CommandList).highlighted is not None)
            burst(app, "enter", "enter")
            await wait_until(pilot, lambda: not CommandPalette.is_open(app))
            await pilot.pause(0.2)
            assert app.is_running and app.return_code is None
            # The first command in the list ran once: its screen over the dashboard, nothing else.
            assert app.screen_stack[0] is dashboard and len(app.screen_stack) == 2
            assert isinstance(app.screen, BreakpointScreen)
    run(scenario())


def test_a_restart_runs_at_the_pace_the_app_opened_with():
    """At 64/s a restart ran all 55 steps of mixed_load in under a second: + carried over r."""
    from cbtui.apps.engine_fed import DEFAULT_SPEED

    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("plus", "plus", "plus", "plus")
            assert app.speed == 64
            await pilot.press("r")
            await wait_until(pilot, lambda: shown_step(app) == 0)
            assert app.speed == DEFAULT_SPEED == 4
            await wait_until(pilot, lambda: app.controller._speed == DEFAULT_SPEED)
            await pilot.press("space")
            await wait_until(pilot, lambda: "running @ 4/s" in header_text(app))
    run(scenario())


def test_x_aborts_the_selected_request_at_the_next_step_and_says_so():
    """Issue #32: x stops the selected request before the next step; the record, the event line and
    a note say so; with nothing selected, or a request already gone, x says why and the run goes on."""
    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await pilot.press("x")  # nothing selected yet
            await wait_until(pilot, lambda: any("select a request first" in n.message for n in app._notifications))
            await pilot.press("down")  # the cursor on the first request: 0, running since step 0
            assert app.selected == 0
            await pilot.press("x", "n")
            await wait_until(pilot, lambda: shown_step(app) == 1)
            record = app.history.current()
            assert record.aborted == [0] and 0 not in {i.request_id for i in record.items}
            assert next(v for v in record.requests if v.id == 0).state == "aborted"
            await wait_until(pilot, lambda: any("request 0 is aborted" in n.message for n in app._notifications))
            await pilot.press("x", "n")  # gone now: refused in one line, and the run steps on
            await wait_until(pilot, lambda: shown_step(app) == 2)
            await wait_until(pilot, lambda: any("cannot be aborted" in n.message for n in app._notifications))
            assert app.engine_state == "running" and not app.history.current().aborted
    run(scenario())
