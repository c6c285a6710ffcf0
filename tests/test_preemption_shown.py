"""Issue 16, item 7: preemption and priority are shown (requests table, header, --events lines), and
a scenario's plugin can be left out (--without-plugin), so priority_sla's 'without it' is visible."""

import asyncio
import re
import subprocess
import sys

import pytest
from dashboard_helpers import NO_GPU, SteadyEngine, header_text, wait_until

from cbtui.apps.dashboard import DashboardApp
from cbtui.render.colors import NONE
from cbtui.run.breakpoints import parse
from cbtui.widgets.requests_table import row_cells, table_columns, wanted_columns
from engine.profiling.gpu_memory import FakeProbe
from engine.records import RequestView
from scenarios import load_scenario


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300)


def view(**changes) -> RequestView:
    fields = dict(id=3, state="prefill", prompt_len=27, prefill_pos=8, generated=7, max_new_tokens=30,
                  arrival_step=0, priority=0, ttft_steps=1, reason=None, num_preemptions=0, output_tail=[])
    return RequestView(**{**fields, **changes})


def test_a_recompute_is_not_shown_as_a_first_prefill_and_preemptions_are_counted():
    columns = table_columns({"pri", "pre"})
    keys = [key for key, _, _ in columns]
    first = [str(c) for c in row_cells(view(), NONE, columns)]
    again = [str(c) for c in row_cells(view(num_preemptions=2), NONE, columns)]
    assert first[keys.index("state")] == "prefill" and again[keys.index("state")] == "recompute"
    assert first[keys.index("pre")] == "" and again[keys.index("pre")] == "2"
    assert str(row_cells(view(priority=5), NONE, columns)[keys.index("pri")]) == "5"
    assert wanted_columns([view(priority=5), view(num_preemptions=1)]) == {"pri", "pre"}
    assert wanted_columns([view()]) == set()  # a run that needs none keeps the room for the reason


def make(name: str, breakpoints, **kwargs) -> DashboardApp:
    scenario = load_scenario(name)
    return DashboardApp(scenario, SteadyEngine(scenario.build_engine(device="cpu")), paused=False,
                        speed=float("inf"), probe=FakeProbe([NO_GPU]), memory_poll_s=3600.0,
                        breakpoints=[parse(b) for b in breakpoints], **kwargs)


def table_text(app) -> str:
    table = app.query_one("#requests")
    labels = " ".join(str(c.label) for c in table.columns.values())
    rows = [" ".join(str(c) for c in table.get_row_at(i)) for i in range(table.row_count)]
    return "\n".join([labels, *rows])


def test_the_dashboard_shows_preemption_counts_and_recompute_in_kv_pressure():
    async def scenario():
        app = make("kv_pressure", ["step:23"])  # request 3 is preempted at 8, admitted again at 23
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.paused and app.history.current().step == 23, timeout=30)
            assert "request 3 admitted again after 1 preemption" in str(app.query_one("#events").render())
            assert re.search(r"preempted\s+3\b", header_text(app))  # 4 at step 2, 3 at 8, 2 at 23
            table = app.query_one("#requests")
            labels = [str(c.label) for c in table.columns.values()]
            row = dict(zip(labels, map(str, table.get_row("3")), strict=True))
            assert row["state"] == "recompute" and row["pre"] == "1"
            assert {str(table.get_row(str(v.id))[labels.index("pre")]) for v in app.history.current().requests
                    if not v.num_preemptions} == {""}
            await pilot.press("q")
    asyncio.run(scenario())


def test_a_priority_column_appears_once_a_request_has_a_priority():
    async def scenario():
        app = make("priority_sla", ["step:16"])
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_until(pilot, lambda: app.paused, timeout=30)
            record = app.history.current()
            assert any(v.priority for v in record.requests)
            assert table_text(app).split()[:2] == ["id", "pri"]
            table = app.query_one("#requests")
            shown = {int(str(table.get_row_at(i)[0]).split()[-1]): str(table.get_row_at(i)[1])
                     for i in range(table.row_count)}
            assert shown == {v.id: "5" if v.priority else "" for v in record.requests}
            assert "5" in shown.values() and "" in shown.values()
            await pilot.press("q")
    asyncio.run(scenario())


@pytest.mark.slow
def test_without_plugin_runs_priority_sla_as_its_help_says_and_events_fit_80_columns():
    scenario = load_scenario("priority_sla")
    urgent = [r.id for r in scenario.build_engine(device="cpu").requests.values() if r.priority == 5]
    assert len(urgent) == 4
    done = cli("scenario", "priority_sla", "--without-plugin", "priority", "--events")
    assert done.returncode == 0, done.stderr
    assert "(without priority)" in done.stdout.splitlines()[0]
    ttft = {int(m[1]): int(m[2]) for m in re.finditer(r"request (\d+) sampled its first token \(TTFT (\d+) step",
                                                       done.stdout)}
    slow = [ttft[i] for i in urgent]
    text = " ".join(scenario.description.split())
    assert f"wait {min(slow)} to {max(slow)} steps" in text, slow
    event_lines = [line for line in done.stdout.splitlines() if line.startswith("    ")]
    assert event_lines and max(map(len, event_lines)) <= 80
    with_plugin = cli("scenario", "priority_sla", "--events")
    fast = {int(m[1]): int(m[2]) for m in re.finditer(r"request (\d+) sampled its first token \(TTFT (\d+) step",
                                                       with_plugin.stdout)}
    assert max(fast[i] for i in urgent) < min(slow)


@pytest.mark.slow
@pytest.mark.parametrize("args, says", [
    (["scenario", "priority_sla", "--without-plugin", "nosuch"], "--without-plugin nosuch: scenario 'priority_sla' "
                                                                 "declares only priority"),
    (["scenario", "mixed_load", "--without-plugin", "priority"], "scenario 'mixed_load' declares no plugin"),
    (["scenario", "mixed_load", "--events", "--json"], "--events prints lines for people"),
])
def test_bad_input_is_one_line_and_exit_2(args, says):
    done = cli(*args)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and says in done.stderr
