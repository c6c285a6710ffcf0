"""The dashboard at 80x24 (a laptop over SSH, a shared tmux): what matters is on screen, uncut."""

from __future__ import annotations

import asyncio

import pytest
from dashboard_helpers import make_app, rendered_lines, shown_step, wait_until

from cbtui.widgets.requests_table import RequestsTable, column_widths, state_name
from engine.records import RequestView
from engine.records.types import REASON_RESERVED


def run(coro):
    return asyncio.run(coro)


async def step(pilot, app, count: int = 1) -> None:
    for _ in range(count):
        target = shown_step(app) + 1
        await pilot.press("n")
        await wait_until(pilot, lambda target=target: shown_step(app) == target)
    await pilot.pause()


@pytest.mark.slow
def test_requests_table_shows_preempted_and_running_requests_before_finished_ones():
    """kv_pressure at 80x24: every preempted request, and the running ones, are in the rows drawn."""
    async def scenario():
        app = make_app(paused=True, scenario_name="kv_pressure")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            table = app.query_one(RequestsTable)
            preemptions = 0
            for _ in range(30):
                await step(pilot, app)
                views = app.history.current().requests
                drawn = "\n".join(rendered_lines(table))
                visible_rows = table.size.height - 1  # less the column labels
                matter = sorted((v for v in views if v.state != "finished"),
                                key=lambda v: (v.state != "preempted", v.state not in ("decode", "prefill"), v.id))
                for view in matter[:visible_rows]:
                    assert f" {view.id} " in drawn and state_name(view) in drawn, (view, drawn)
                preemptions += sum(v.state == "preempted" for v in views)
                assert not table.show_horizontal_scrollbar
                assert table.virtual_size.width <= table.size.width
            assert preemptions, "kv_pressure preempts within 30 steps"
    run(scenario())


@pytest.mark.slow
def test_the_selected_request_stays_selected_and_on_screen_as_rows_move():
    async def scenario():
        app = make_app(paused=True, scenario_name="kv_pressure")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            table = app.query_one(RequestsTable)
            await pilot.press("down", "down", "down", "down")  # request 3, preempted at step 8
            chosen = app.selected
            assert chosen is not None
            rows_held = set()
            for _ in range(14):  # requests are preempted and rows move
                await step(pilot, app)
                if any(v.id == chosen for v in app.history.current().requests):
                    assert app.selected == chosen and table.selected_request() == chosen
                    assert any(f" {chosen} " in line for line in rendered_lines(table)[1:])
                    rows_held.add(table.cursor_row)
            assert len(rows_held) > 1, "the rows are ordered by what matters, so the chosen one moves"
    run(scenario())


def test_the_reason_column_has_room_for_the_longest_reason_at_80_columns():
    assert column_widths(78 - 1)["why"] >= len(REASON_RESERVED)

    async def scenario():
        app = make_app(paused=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            table = app.query_one(RequestsTable)
            await wait_until(pilot, lambda: table.row_count > 0)  # step 0 drawn: nothing redraws it while paused
            await pilot.pause(0.1)
            view = RequestView(3, "waiting", 40, 0, 0, 20, 0, 0, None, REASON_RESERVED, 0, [])
            table.show([view])
            await pilot.pause()
            assert any(REASON_RESERVED in line for line in rendered_lines(table))
            assert not table.show_horizontal_scrollbar
    run(scenario())


def test_the_header_names_the_variant_and_policy_that_run():
    """static_vs_continuous and its --variant continuous used to look the same."""
    from dashboard_helpers import SteadyEngine, header_text

    from scenarios import load_scenario

    async def header_of(variant):
        scenario = load_scenario("static_vs_continuous")
        engine = SteadyEngine(scenario.build_engine(variant, device="cpu"))
        app = make_app(paused=True, scenario_name="static_vs_continuous", engine=engine, variant=variant)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: "Step 0" in header_text(app))
            return header_text(app).split("\n")[0][:78]  # what fits at 80 columns

    static, continuous = run(header_of(None)), run(header_of("continuous"))
    assert "policy static" in static and "variant" not in static
    assert "policy fcfs · variant continuous" in continuous


def test_history_numbering_is_in_steps_and_the_memory_panel_shows_the_viewed_step():
    """Records carry the process RSS of their step (512 MiB here); this moment's reading (3 GiB) is not
    what a past step had."""
    from dashboard_helpers import FIXED_RSS, header_text

    from engine.profiling.gpu_memory import FakeProbe, MemoryReading

    now = MemoryReading(rss_bytes=3 << 30, note="no GPU: test", source="rss")

    async def scenario():
        app = make_app(paused=True, probe=FakeProbe([now]))
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await step(pilot, app, 4)
            memory = app.query_one("#memory-live")
            assert "3.0 GiB" in str(memory.render())
            await pilot.press("left", "left")
            await pilot.pause()
            assert header_text(app).startswith("Step 2 of 4 paused")
            shown = str(memory.render())
            assert "at step 2" in shown and f"{FIXED_RSS >> 20}.0 MiB" in shown and "3.0 GiB" not in shown
            await pilot.press("space")  # live again: this moment's reading
            await pilot.pause()
            assert "3.0 GiB" in str(memory.render())
    run(scenario())


def test_under_no_color_the_kv_grid_and_mask_name_requests_by_glyph_and_say_so(monkeypatch):
    from cbtui.widgets.kv_grid import KVGrid
    from cbtui.widgets.mask import MaskCanvas

    monkeypatch.setenv("NO_COLOR", "1")

    async def scenario():
        app = make_app(paused=True, scenario_name="kv_pressure")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await step(pilot, app, 8)
            assert app.no_color
            kv = "\n".join(rendered_lines(app.query_one(KVGrid)))
            assert "glyph = request id" in kv or "glyph=id" in kv  # (short beside '× request 3 freed 5 blocks')
            owners = {int(r) for r in app.history.current().kv.block_tables}
            assert all(str(r) in kv.split("glyph")[-1] or str(r) in kv for r in owners)
            mask = "".join(rendered_lines(app.query_one(MaskCanvas)))
            drawn = {i.request_id for i in app.history.current().items}
            assert {str(r) for r in drawn} <= set(mask), "each scheduled request's glyph is in the mask"
    run(scenario())


def test_with_sixteen_colours_the_panels_use_glyphs_too(monkeypatch):
    """TERM=xterm: a dozen hues at most, so the KV grid names requests by glyph, with its key."""
    import textual.constants

    from cbtui.widgets.kv_grid import KVGrid

    monkeypatch.setattr(textual.constants, "COLOR_SYSTEM", "standard")

    async def scenario():
        app = make_app(paused=True, scenario_name="kv_pressure")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await step(pilot, app, 2)
            assert app.console.color_system == "standard"
            kv = "\n".join(rendered_lines(app.query_one(KVGrid)))
            assert "glyph = request id" in kv or "glyph=id" in kv
    run(scenario())


def test_kv_summary_wraps_its_figures_instead_of_cutting_them():
    """'× f…' (freed: 4) and '1…' (1 cell = 2 blocks) at 80x24: each figure goes whole on a line."""
    from cbtui.render.colors import FULL
    from cbtui.widgets.kv_grid import paged_text
    from engine.records import KVView

    tables = {str(r): tuple(range(r * 8, r * 8 + 8)) for r in range(11)}
    kv = KVView("paged", 8, 96, 88, 8, tables, {r: 64 for r in tables}, [4, 11], 64, 4096,
                freed_blocks={"4": (32, 33), "11": (90, 91)})
    lines = paged_text(kv, width=38, rows=3, selected=None, mode=FULL).plain.split("\n")
    assert all(len(line) <= 38 for line in lines)
    summary = "\n".join(lines[:3])
    assert "used 88/96  free 8  block 8 tok" in summary
    assert "1 cell = 3 blocks" in summary and "× requests 4, 11 freed 4 blocks" in summary


def test_static_batch_padding_and_zoom_are_shown_whole_at_80x24():
    from cbtui.widgets.budget import BudgetBar
    from cbtui.widgets.mask_legend import MaskLegend

    async def scenario():
        app = make_app(paused=True, scenario_name="static_vs_continuous")
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            while not app.history.current().padding_slots:
                await step(pilot, app)
            await pilot.pause(0.1)
            budget = rendered_lines(app.query_one(BudgetBar))
            assert f"padding {app.history.current().padding_slots} slots" in "\n".join(budget)
            assert not any("…" in line for line in budget), budget
            await pilot.press("down", "z")
            await pilot.pause(0.1)
            legend = rendered_lines(app.query_one(MaskLegend))
            assert f"zoom: request {app.selected}" in legend[0] or f"zoom: {app.selected}" in legend[0]
            assert not any("…" in line for line in legend), legend
    run(scenario())


def test_at_80_columns_the_output_tail_has_room_until_a_long_reason_needs_it():
    """The reason column starts as wide as its label: most reasons fit ("no free KV blocks"), and the
    output tail (decoded text with a checkpoint) keeps 13 columns; "budget reserved for priority"
    takes them."""
    from cbtui.widgets.requests_table import WHY_MIN, WHY_WIDTH

    assert column_widths(79, WHY_MIN)["text"] >= 12
    assert column_widths(79, WHY_WIDTH)["text"] == 0 and column_widths(79, WHY_WIDTH)["why"] >= WHY_WIDTH


def test_random_weights_say_how_to_run_a_real_model_at_80x24_and_a_recorded_real_model_is_named():
    """A random preset's header says how to run a real model (whole: the longer wordings need room), in
    the rows it had; a replay of a run on a real model names that model and says nothing of it."""
    import json

    from dashboard_helpers import DATA, NO_GPU, SteadyEngine

    from cbtui.apps.dashboard import DashboardApp
    from cbtui.widgets.header import StepHeader
    from engine.profiling.gpu_memory import FakeProbe
    from engine.records.recording import RecordedRun, load_recording

    async def header_lines(app):
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await step(pilot, app, 2)
            return rendered_lines(app.query_one(StepHeader))

    lines = run(header_lines(make_app(paused=True)))
    assert len(lines) == 2 and "random tiny" in lines[0], lines  # no row taken; the title has the room

    import tempfile
    from pathlib import Path

    header, *records = (DATA / "mixed_load.jsonl").read_text().splitlines()
    real = {**json.loads(header), "model": "SmolLM2-135M-Instruct (Q4_1)", "checkpoint": "/cache/converted/smollm2"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "real.jsonl"
        path.write_text("\n".join([json.dumps(real), *records]) + "\n")
        recording = load_recording(path)
    app = DashboardApp(recording, SteadyEngine(RecordedRun(recording.records, recording.header)), paused=True,
                       probe=FakeProbe([NO_GPU]), recorded=True, memory_poll_s=3600.0)
    lines = run(header_lines(app))
    assert "recorded · SmolLM2" in lines[0] and len(lines) == 2, lines
    assert "smollm2 runs" not in "".join(lines) and "try --model" not in "".join(lines)


def test_under_no_color_at_80x24_no_mask_row_holds_two_requests(monkeypatch):
    """mixed_load (the committed recording) at 80x24 without colour: the mask is 8 glyph rows; each
    row is one request's queries, the decodes one row each, and the legend names who is drawn."""
    from dashboard_helpers import make_replay_app

    from cbtui.render.colors import request_glyph
    from cbtui.widgets.mask import MaskCanvas
    from cbtui.widgets.mask_legend import MaskLegend

    monkeypatch.setenv("NO_COLOR", "1")

    async def scenario():
        app = make_replay_app(paused=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            for _ in range(7):
                await step(pilot, app)
                items = app.history.current().items
                lines = [line for line in rendered_lines(app.query_one(MaskCanvas)) if line.strip()]
                assert all(len(set(line) - {" "}) == 1 for line in lines), lines
                glyphs = {request_glyph(i.request_id) for i in items}
                assert {line.strip()[0] for line in lines} == glyphs
                for decode in (i for i in items if i.kind == "decode"):
                    assert sum(line.strip()[0] == request_glyph(decode.request_id) for line in lines) == 1
                legend = rendered_lines(app.query_one(MaskLegend))
                queries = sum(i.num_tokens for i in items)
                assert legend[0].startswith(f"{queries} quer")
    run(scenario())


def test_the_legend_counts_in_the_singular_and_says_who_is_not_drawn():
    from textual.app import App

    from cbtui.render.colors import NONE
    from cbtui.render.mask_raster import rasterize
    from cbtui.widgets.mask_legend import MaskLegend
    from engine.records import ScheduledItem

    class LegendApp(App[None]):
        def compose(self):
            yield MaskLegend()

    async def scenario():
        app = LegendApp()
        async with app.run_test(size=(38, 3)) as pilot:
            legend = app.query_one(MaskLegend)
            one = [ScheduledItem(1, "decode", 0, 1, 1)]
            legend.show(one, None, rasterize(one, 8, 38), None, NONE)
            await pilot.pause()
            assert rendered_lines(legend)[0].startswith("1 query↓ × 1 key→")
            many = [ScheduledItem(r, "decode", 4, 1, 5) for r in range(12)]
            legend.show(many, None, rasterize(many, 8, 38), None, NONE)
            await pilot.pause()
            lines = rendered_lines(legend)
            assert lines[0] == "12 queries↓ × 60 keys→  +4 not shown"  # ('4 requests not shown' where it fits)
            assert lines[2].split() == [f"{r}d" for r in range(8)]  # the entries name the requests drawn
    run(scenario())


def test_the_step_time_is_on_screen_beside_the_budget():
    """Lesson 14 asks how long a step takes: the budget panel's title says it, in ms, at 80x24 too."""
    from dashboard_helpers import make_replay_app

    from cbtui.apps.dashboard import budget_title

    async def scenario(size, title, wall_time_s=0.01):
        app = make_replay_app(paused=True)  # SteadyEngine: every step takes 10 ms, unless told
        app.controller._engine._wall = wall_time_s  # (the replay's SteadyEngine)
        async with app.run_test(size=size) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            await step(pilot, app)
            assert app.query_one("#budget-panel").border_title == title
    run(scenario((80, 24), "Budget: 48 tokens per step · 10 ms"))
    run(scenario((80, 24), "Budget: 48 tokens per step · 0.42 ms", 0.00042))  # the longest a time gets
    run(scenario((160, 48), "Token budget: 48 tokens per step · this step 10 ms"))
    from pathlib import Path

    from engine.records.recording import load_recording
    rec = load_recording(Path(__file__).with_name("data") / "mixed_load.jsonl").records[1]
    rec.wall_time_s = 1.5
    assert budget_title(rec, 10) == "Token budget: 48 tokens per step"  # too narrow for the time: the budget
    assert budget_title(rec, 200).endswith("this step 1.5 s")
