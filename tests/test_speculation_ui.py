"""Speculation on screen: the mask's draft rows, the budget bar's share, the table and the event line,
all from records."""

from __future__ import annotations

import asyncio
import re

import pytest
from dashboard_helpers import SteadyEngine, header_text, shown_step, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from textual.color import Color

from cbtui.apps.dashboard import DashboardApp
from cbtui.render.colors import FULL, NONE, SIXTEEN
from cbtui.render.mask_raster import rejected_draft_rows
from cbtui.render.speculation_text import drafts_cell, speculation_note
from cbtui.widgets.budget import BudgetBar
from cbtui.widgets.mask import REJECTED, REJECTED_GLYPH, mask_strips
from cbtui.widgets.mask_legend import MaskLegend
from cbtui.widgets.requests_table import RequestsTable
from engine.records import RequestView, ScheduledItem
from scenarios import load_scenario

BACKGROUND = Color(0, 0, 0)
# A plain decode, then a decode verifying 4 drafts of which 1 stood: rows 2..4 are rejected drafts.
ITEMS = [ScheduledItem(0, "decode", 5, 1, 6), ScheduledItem(1, "decode", 3, 5, 8, drafts=4, accepted=1)]


def test_rejected_draft_rows_are_drawn_apart_without_colour():
    strips, _ = mask_strips(ITEMS, width=14, height=6, background=BACKGROUND, mode=NONE)
    lines = ["".join(seg.text for seg in strip) for strip in strips]
    # rows: 0 = request 0's decode, 1 = request 1's own token, 2 = its accepted draft, 3-5 rejected
    for row, owner in ((0, "0"), (1, "1"), (2, "1")):
        assert REJECTED_GLYPH not in lines[row] and owner in lines[row]
    for row in (3, 4, 5):
        assert set(lines[row].strip()) == {REJECTED_GLYPH}
        assert lines[row].count(REJECTED_GLYPH) == 3 + row  # its causal row: history 3, then drafts


def test_rejected_draft_rows_have_their_own_colour():
    from cbtui.widgets.mask import StyleBook
    book = StyleBook(BACKGROUND)
    strips, _ = mask_strips(ITEMS, width=14, height=3, background=BACKGROUND, book=book)
    grey = book.color(REJECTED).rich_color
    tops = [{seg.style.color for seg in strip if "▀" in seg.text} for strip in strips]
    bottoms = [{seg.style.bgcolor for seg in strip} for strip in strips]
    # Half blocks, two pixel rows a line: line 0 = rows 0, 1 (decodes' own tokens); line 1 = row 2
    # (the accepted draft, on top) and row 3 (rejected, below); line 2 = rows 4, 5 (rejected).
    assert grey not in tops[0] | bottoms[0]
    assert grey not in tops[1] and grey in bottoms[1]
    assert grey in bottoms[2] and tops[2] | bottoms[2] <= {grey, BACKGROUND.rich_color}
    plain = [ScheduledItem(0, "decode", 5, 1, 6), ScheduledItem(1, "decode", 3, 5, 8)]
    assert all(grey not in {seg.style.bgcolor for seg in strip} for strip in mask_strips(plain, 14, 3, book=book)[0])


def test_event_line_and_table_cell_say_how_many_drafts_stood():
    from dataclasses import replace

    from engine import Engine, EngineConfig
    engine = Engine(EngineConfig(model="tiny", device="cpu"))
    engine.add_request([1, 2, 3], max_new_tokens=2)
    record = replace(engine.step(), items=ITEMS)
    assert speculation_note(record) == ("request 1: 1 of 4 drafts accepted",)
    assert speculation_note(replace(record, items=ITEMS[:1])) == ()
    view = RequestView(1, "decode", 3, 3, 4, 10, 0, 0, 1, None, 0, [], drafts_proposed=9, drafts_accepted=5)
    assert drafts_cell(view) == "5/9"  # accepted/proposed, in the table's drafts column


@pytest.mark.slow
def test_dashboard_shows_speculating_decodes():
    scenario = load_scenario("speculative")

    async def drive():
        app = DashboardApp(scenario, SteadyEngine(scenario.build_engine(device="cpu")), paused=True,
                           memory_poll_s=3600.0)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            for _ in range(15):
                await pilot.press("n")
            await wait_until(pilot, lambda: shown_step(app) == 15)
            budget = str(app.query_one(BudgetBar).render())
            legend = str(app.query_one(MaskLegend).render())
            assert "+▒" in budget and "▒" in budget.split("\n")[0]  # the drafts' share, in the bar too
            assert "d+" in legend  # e.g. 3d+4/4: a decode that verified 4 drafts, all accepted
            table = app.query_one(RequestsTable)
            # Drafts have a column of their own: "why not scheduled" holds reasons only (it held
            # 'drafts 4/4 ok' for requests that did run).
            drafts = [str(table.get_cell(str(rid), "drafts")) for rid in range(6)]
            assert any(re.fullmatch(r"\d+/\d+", c) for c in drafts), drafts
            for view in app.history.current().requests:
                assert str(table.get_cell(str(view.id), "why")) == (view.reason or ""), view
            assert "drafts accepted" in header_text(app)
    asyncio.run(drive())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=4),
       st.sampled_from([FULL, SIXTEEN, NONE]))
def test_any_draft_counts_a_recording_holds_are_drawn_without_raising(shapes, mode):
    """A recording from outside may say anything about drafts (more than the item's rows, more
    accepted than proposed): the mask still draws, with at most the item's own rows marked."""
    items = [ScheduledItem(i, "decode", 3, n + 1, 4 + n, drafts=d, accepted=a) for i, (n, d, a) in enumerate(shapes)]
    strips, _ = mask_strips(items, width=20, height=6, background=BACKGROUND, mode=mode)
    assert len(strips) == 6 and all(s.cell_length == 20 for s in strips)
    flags = rejected_draft_rows(items)
    assert len(flags) == sum(i.num_tokens for i in items)


def test_metrics_screen_says_the_acceptance():
    from rich.console import Console

    from cbtui.render.metrics_view import render_metrics
    from engine.profiling.memory_profiler import MemoryProfiler
    from engine.profiling.sources import FunctionSource
    from engine.records.metrics import MetricsCollector
    from scenarios.compare import iter_records

    collector = MetricsCollector()
    for record in iter_records(load_scenario("speculative"), device="cpu"):
        collector.observe(record)
    spec = collector.summary()["speculation"]
    console = Console(width=120, record=True)
    profiler = MemoryProfiler(sources=[FunctionSource("fake", lambda: {"fake": 1 << 20})])
    console.print(render_metrics(collector, profiler, []))
    text = console.export_text()
    assert f"speculation: {spec['drafts_accepted']} of {spec['drafts_proposed']} drafts accepted" in text
