"""`cbtui bench soak` at a tiny size: the table's shape, and that it keeps no StepRecords."""

from __future__ import annotations

import gc
import itertools
import json

import pytest
from click.testing import CliRunner

from cbtui.bench.cli import bench
from cbtui.bench.soak import COLUMNS, GcPauses, Window, run_soak
from engine.records import StepRecord


def live_records() -> int:
    return sum(type(o) is StepRecord for o in gc.get_objects())


@pytest.mark.parametrize("model", ["null", "tiny"])
def test_soak_reports_every_tenth_and_holds_no_records(model):
    before = live_records()
    held = []
    points = run_soak(300, alive=32, model=model, on_checkpoint=lambda p: held.append(live_records() - before))
    assert len(points) == 10
    assert all(p.finished >= 30 * (k + 1) for k, p in enumerate(points))  # a row at each tenth
    assert points[-1].finished == points[-1].added == 300
    assert all(a.finished < b.finished and a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(points))
    assert sum(p.steps for p in points) > 10 and all(p.steps > 0 for p in points)
    for p in points:
        assert 0 < p.step_ms_median <= p.step_ms_max and p.record_ms_median >= 0
        assert p.rss_mb > 0 and p.gc_longest_ms >= 0 and p.gc_passes >= 0
        assert p.added - p.finished <= 32
    # never more than the record of the step in hand (and the engine's own, if it keeps one)
    assert max(held) <= 2, held
    assert live_records() - before <= 2


def test_a_window_keeps_step_times_only_and_starts_over_at_each_checkpoint():
    assert set(Window.__dataclass_fields__) == {"step_s", "record_s", "views"}
    window = Window()
    window.step_s, window.record_s = [0.001, 0.003, 0.002], [0.0, 0.001, 0.0]
    point = window.close(10, 12, 1.5, GcPauses())
    assert (point.step_ms_median, point.step_ms_max, point.steps) == (2.0, 3.0, 3)
    assert window.step_s == [] and window.record_s == []


def test_gc_pauses_are_timed_and_taken_per_window():
    pauses = GcPauses()
    with pauses.watching():
        gc.collect()
    assert pauses not in gc.callbacks
    longest, passes = pauses.take()
    assert passes >= 1 and longest > 0
    assert pauses.take() == (0.0, 0)


def test_the_command_prints_one_row_per_checkpoint():
    result = CliRunner().invoke(bench, ["soak", "--requests", "300", "--alive", "32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "null model" in report["title"] and len(report["checkpoints"]) == 10
    table = CliRunner().invoke(bench, ["soak", "--requests", "300", "--alive", "32", "--checkpoints", "3"])
    assert table.exit_code == 0, table.output
    for col in ("finished", "step ms (median)", "RSS MB", "longest GC ms", "views/record"):
        assert col in table.stdout
    assert len(COLUMNS) == 11 and "│      300 │" in table.stdout
