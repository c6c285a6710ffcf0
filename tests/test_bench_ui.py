"""`cbtui bench ui` parts that are cheap enough for a test: shapes are right, frames are built."""

from __future__ import annotations

from click.testing import CliRunner

from cbtui.bench.cli import bench
from cbtui.bench.ui import big_step_shapes, time_frames


def test_big_step_shapes_are_8192_queries_over_16384_keys():
    for items in big_step_shapes().values():
        assert sum(i.num_tokens for i in items) == 8192
        assert sum(i.key_len for i in items) == 16384


def test_time_frames_reports_cold_median_worst():
    cold, median, worst = time_frames(big_step_shapes()["1 prefill chunk"], 40, 10, repeat=2)
    assert cold > 0 and 0 < median <= worst


def test_bench_ui_is_registered():
    result = CliRunner().invoke(bench, ["ui", "--help"])
    assert result.exit_code == 0 and "key latency" in result.output.lower()
