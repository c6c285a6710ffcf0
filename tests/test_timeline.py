"""The per-request timeline (key t): what each request did in each step, from the records alone,
bounded, and a screen at 80x24 that follows the run, scrolls, and reads without colour."""

from __future__ import annotations

import asyncio
import re

import pytest
from dashboard_helpers import make_app, wait_until
from test_lessons import screen_text, squeeze

from cbtui.render.timeline import Timeline, legend, step_cells
from cbtui.widgets.timeline_screen import TimelineScreen, TimelineView, ruler
from scenarios import load_scenario


def records(name: str, steps: int | None = None):
    engine = load_scenario(name).build_engine(device="cpu")
    out = []
    while engine.has_unfinished() and (steps is None or len(out) < steps):
        out.append(engine.step())
    return out


def test_a_preempted_request_reads_prefill_decode_preempted_recompute_decode_finished():
    run = records("kv_pressure")
    timeline = Timeline()
    for record in run:
        timeline.add(record)
    row = timeline.row(3, 0, len(timeline))
    # squeezed to the order of what happened: it arrived at once, waited, prefilled, decoded, was
    # preempted (and waited, preempted), recomputed its tokens, decoded on and finished
    phases = re.sub(r"(.)\1+", r"\1", row.strip())
    assert phases.startswith("·▒█×↺█") and phases.endswith("█✓"), row
    preempted_at = next(r.step for r in run if 3 in r.preempted)
    assert row[preempted_at] == "×" and row[preempted_at - 1] == "█"
    finished_at = next(r.step for r in run if 3 in r.finished)
    assert row[finished_at] == "✓" and row[finished_at + 1:].strip() == ""  # gone after it finished
    assert timeline.requests() == sorted({v.id for r in run for v in r.requests if v.state != "pending"})


def test_each_state_has_its_own_glyph_so_no_colour_is_needed():
    glyphs = [glyph for glyph, _, _ in legend()]
    assert len(set(glyphs)) == len(glyphs) and " " not in glyphs
    assert {meaning for _, meaning, _ in legend()} >= {"waiting", "prefill", "decode", "preempted", "finished"}


def test_decode_with_drafts_and_requests_not_yet_arrived():
    run = records("speculative", 14)
    cells = step_cells(run[13])
    assert cells[3] == "▙"  # request 3 verifies 4 drafts in step 13
    early = records("mixed_load", 1)[0]
    assert set(step_cells(early)) == {0, 1}  # the others have not arrived: no cell, not "waiting"


def test_the_timeline_keeps_the_newest_steps_and_forgets_requests_seen_only_before():
    run = records("mixed_load")
    timeline = Timeline(max_steps=10)
    for record in run:
        timeline.add(record)
    assert timeline.steps == [r.step for r in run[-10:]]
    assert 0 not in timeline.requests()  # request 0 finished long before the last 10 steps
    timeline.add(run[0])  # step 0 again: a restart starts the timeline over
    assert timeline.steps == [0]


def test_the_ruler_numbers_every_tenth_step_and_marks_the_one_shown():
    assert ruler(list(range(0, 25)), None) == "0         10        20   "
    assert ruler(list(range(5, 25)), 12) == "     10▼       20   "


def timeline_rows(app) -> list[str]:
    text = screen_text(app)
    return [line for line in text.splitlines() if re.match(r"\s+\d+ ", line)]


@pytest.mark.parametrize("no_color", [True, False], ids=["NO_COLOR", "colour"])
def test_t_opens_a_timeline_at_80x24_that_follows_the_run_and_scrolls(no_color, monkeypatch):
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    else:
        monkeypatch.delenv("NO_COLOR", raising=False)

    async def scenario():
        app = make_app(paused=True, scenario_name="burst_arrivals")  # 24 requests, 50-odd steps
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.history.current() is not None)
            for _ in range(5):
                await pilot.press("n")
            await wait_until(pilot, lambda: app.history.current().step == 5)
            await pilot.press("t")
            await wait_until(pilot, lambda: isinstance(app.screen, TimelineScreen))
            await pilot.pause(0.3)
            text = screen_text(app)
            flat = squeeze(text)  # the legend wraps between entries at 80 columns
            for entry in ("· waiting", "▒ prefill", "█ decode", "× preempted", "✓ finished"):
                assert entry in flat, text
            assert " step 0    ▼" in text, text  # step 5, the one on the dashboard, marked
            rows = timeline_rows(app)
            assert rows[0].startswith("    0 ▒"), text
            # the run goes on beneath (space resumes it): new steps appear on the right
            await pilot.press("space")
            await wait_until(pilot, lambda: app.history.current().step >= 40, timeout=60)
            await pilot.press("space")
            await pilot.pause(0.5)
            view = app.screen.query_one(TimelineView)
            newest = app.history.newest_step()
            first, count = view.visible_steps()
            assert view.timeline.steps[first + count - 1] == newest  # following: the newest in view
            # more requests than rows: the view scrolls down to them, and back to the first step
            assert len(view.timeline.requests()) > view.grid_height()
            await pilot.press("end")
            await pilot.press("pagedown")
            await pilot.pause(0.3)
            assert timeline_rows(app)[0].split()[0] != "0"
            await pilot.press("home")
            await pilot.pause(0.2)
            assert view.visible_steps()[0] == 0
            await pilot.press("escape")
            await wait_until(pilot, lambda: not isinstance(app.screen, TimelineScreen))
            await pilot.press("q")
    asyncio.run(scenario())
