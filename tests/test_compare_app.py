"""`cbtui compare`: two variants of a scenario on one screen, in lockstep, with their difference."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from dashboard_helpers import FailingEngine, SteadyEngine, wait_until
from serve_helpers import help_text

from cbtui.apps.compare import CompareApp
from cbtui.widgets.error_panel import ErrorPanel
from cbtui.widgets.help_screen import HelpScreen
from cbtui.widgets.run_difference import RunDifference, RunFigures
from engine.records.summary import RunTotals
from scenarios import ScenarioError, load_scenario
from scenarios.compare import iter_records
from scenarios.variant_pair import variant_pair


def make_compare(name: str = "static_vs_continuous", names: str | None = None, paused: bool = True,
                 **kwargs) -> CompareApp:
    scenario = load_scenario(name)
    pair = variant_pair(scenario, names)

    def build():
        return [SteadyEngine(v.build_engine(device="cpu")) for v in pair]

    return CompareApp(scenario, pair, build(), rebuild=build, paused=paused, **kwargs)


def headless_figures(name: str, names: str | None = None) -> list[RunFigures]:
    """What each variant's own headless run adds up to, from its records (no UI)."""
    scenario = load_scenario(name)
    figures = []
    for v in variant_pair(scenario, names):
        totals = RunTotals()
        for record in iter_records(v.scenario, v.compare_key, device="cpu"):
            totals.observe(record)
        figures.append(RunFigures.of(totals))
    return figures


def pane_header(app, index: int) -> str:
    return str(app.panes[index].query_one(".pane-header").render())


def difference_text(app) -> str:
    return str(app.query_one(RunDifference).render())


def run(coro):
    return asyncio.run(coro)


@pytest.mark.slow
def test_one_key_steps_both_runs_and_history_walks_both_at_80x24():
    async def scenario():
        app = make_compare()
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: all(p.history.newest_step() == 0 for p in app.panes))
            for expected in (1, 2, 3):
                await pilot.press("n")
                await wait_until(pilot, lambda e=expected: all(p.history.newest_step() == e for p in app.panes))
            await pilot.pause(0.2)
            assert [p.history.newest_step() for p in app.panes] == [3, 3], "paused: neither run steps alone"
            # 80 columns: one run at a time, its header naming the variant; the difference stays in view.
            a, b = app.panes
            assert a.display and not b.display
            assert "Step 3" in pane_header(app, 0) and "A base" in pane_header(app, 0)
            assert "policy=static" in pane_header(app, 0)
            assert app.query_one(RunDifference).display and "steps" in app.query_one(RunDifference).border_title
            await pilot.press("tab")
            assert b.display and not a.display
            assert "B continuous" in pane_header(app, 1) and "Step 3" in pane_header(app, 1)
            # ← walks both histories to the same step; the difference follows the step on screen.
            await pilot.press("left", "left")
            assert [p.history.current().step for p in app.panes] == [1, 1]
            assert "Step 1" in pane_header(app, 1)
            lines = difference_text(app).splitlines()
            assert lines[0].split()[:3] == ["A", "base", "2"] and lines[1].split()[:3] == ["B", "continuous", "2"]
            await pilot.press("right")
            assert [p.history.current().step for p in app.panes] == [2, 2]
            await pilot.press("space")  # back to live, running: both advance together
            await wait_until(pilot, lambda: all((p.history.newest_step() or 0) >= 6 for p in app.panes))
            steps = [p.history.newest_step() for p in app.panes]
            assert abs(steps[0] - steps[1]) <= 1
            for row in difference_text(app).splitlines():
                assert len(row) <= 78, row
            await pilot.press("q")
    run(scenario())


@pytest.mark.slow
@pytest.mark.parametrize("name, names", [("static_vs_continuous", None), ("kv_pressure", None)])
def test_difference_matches_each_variants_headless_totals_at_160x48(name, names):
    expected = headless_figures(name, names)

    async def scenario():
        app = make_compare(name, names, paused=False, speed=float("inf"))
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: app.engine_state == "finished", timeout=120)
            await pilot.pause(0.2)
            a, b = app.panes
            assert a.display and b.display, "160 columns: side by side"
            assert a.region.x < b.region.x and a.region.y == b.region.y
            assert [a.figures(), b.figures()] == expected
            rows = difference_text(app).splitlines()
            for row, figures in zip(rows, expected, strict=False):
                cells = row.split()
                assert cells[-5:] == [str(figures.steps), f"{figures.finished}/{len(app.scenario.requests)}",
                                      f"{figures.ttft_mean:.1f}", str(figures.padding), str(figures.preemptions)]
            delta_steps = expected[1].steps - expected[0].steps
            assert rows[2].split()[3] in (f"{delta_steps:+d}".replace("-", "−"), "±0")
            # The shorter run shows its last step (finished) while the longer one shows its own.
            longer = max(expected, key=lambda f: f.steps)
            assert app.newest_step() == longer.steps - 1
            await pilot.press("q")
    run(scenario())


def test_a_run_that_fails_is_named_and_both_histories_stay():
    scenario = load_scenario("static_vs_continuous")
    pair = variant_pair(scenario)
    engines = [SteadyEngine(pair[0].build_engine(device="cpu")), FailingEngine(pair[1].build_engine(device="cpu"), 2)]

    async def scenario_():
        app = CompareApp(scenario, pair, engines, paused=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_until(pilot, lambda: app.panes[1].history.newest_step() == 0)
            await pilot.press("n", "n")
            await wait_until(pilot, lambda: app.engine_state == "failed")
            assert app.error.startswith("B continuous: RuntimeError: boom at step 2")
            assert app.query_one(ErrorPanel).display
            await pilot.press("left")
            assert [p.history.current().step for p in app.panes] == [0, 0]
            await pilot.press("q")
    run(scenario_())


def test_key_states_can_be_asked_before_the_app_has_a_screen():
    """check_action guards the one state that reads the screen (tab: only when one run is shown at a
    time): before the app runs it answers True instead of raising ScreenStackError. (The guard read
    App.is_mounted, a method, so always true.)"""
    app = make_compare()
    assert app.check_action("other_run", ()) is True


def test_help_lists_the_keys_compare_has():
    async def scenario():
        app = make_compare()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            text = help_text(app)
            assert "the other run" in text and "both runs" in text and "padding" in text
            assert "zoom" not in text and "metrics" not in text.lower()
            await pilot.press("escape")
            await pilot.press("q")
    run(scenario())


def test_static_vs_continuous_difference_shows_padding_and_fewer_steps():
    static, continuous = headless_figures("static_vs_continuous")
    assert static.padding > 0 and continuous.padding == 0 and continuous.steps < static.steps


def test_without_plugin_variant_drops_the_plugin():
    scenario = load_scenario("priority_sla")
    base, without = variant_pair(scenario, "base,without:priority")
    assert without.name == "without:priority"
    assert "priority" in base.build_engine(device="cpu").header().plugins
    assert without.build_engine(device="cpu").header().plugins == []
    assert "no priority plugin" in without.settings()
    # Its default pair is its own [compare] variant (no_priority: the same run without the plugin)
    assert [v.name for v in variant_pair(scenario)] == ["base", "no_priority"]


@pytest.mark.parametrize("names, words", [
    ("a,b", "no variant 'a'"), ("base", "two names"), ("base,base", "twice"), ("base,,", "two names"),
])
def test_bad_variant_names_list_the_variants(names, words):
    with pytest.raises(ScenarioError) as err:
        variant_pair(load_scenario("long_prompt"), names)
    assert words in str(err.value) and "base, chunk_32, chunk_16" in str(err.value)


@pytest.mark.slow
def test_cli_bad_variant_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "cbtui", "compare", "long_prompt", "--variants", "base,chunk_8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "no variant 'chunk_8'" in proc.stderr and "variants: base, chunk_32, chunk_16" in proc.stderr


def test_the_padding_column_says_its_unit():
    """'padding 80' had no unit: it counts slot-steps (a slot idle for a step)."""
    from cbtui.widgets.run_difference import TITLE

    assert "padding slot-steps" in TITLE and len(TITLE) <= 76  # the panel's width at 80 columns


def test_at_160x48_each_pane_header_is_cut_not_wrapped_and_keeps_its_counts():
    """Side by side, each pane is 80 columns: the first header line wrapped ('paged' alone on the
    second line), which pushed the counts ('running 3  waiting 4 ...') out of the header."""
    from dashboard_helpers import rendered_lines

    from cbtui.widgets.header import StepHeader

    async def scenario():
        app = make_compare()
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: all(p.history.current() is not None for p in app.panes))
            await pilot.pause(0.2)
            for pane in app.panes:
                lines = rendered_lines(pane.query_one(StepHeader))
                assert lines[0].strip().startswith("Step 0") and lines[1].strip().startswith("running ")
            await pilot.press("q")
    run(scenario())
