"""The dashboard at 80x24 (a laptop over SSH, a shared tmux): what matters is on screen, uncut."""

from __future__ import annotations

import asyncio

from dashboard_helpers import make_app, rendered_lines, shown_step, wait_until

from cbtui.widgets.requests_table import RequestsTable, column_widths
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
                    assert f" {view.id} " in drawn and view.state in drawn, (view, drawn)
                preemptions += sum(v.state == "preempted" for v in views)
                assert not table.show_horizontal_scrollbar
                assert table.virtual_size.width <= table.size.width
            assert preemptions, "kv_pressure preempts within 30 steps"
    run(scenario())


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
            view = RequestView(3, "waiting", 40, 0, 0, 20, 0, 0, None, REASON_RESERVED, 0, [])
            table.show([view])
            await pilot.pause()
            assert any(REASON_RESERVED in line for line in rendered_lines(table))
            assert not table.show_horizontal_scrollbar
    run(scenario())
