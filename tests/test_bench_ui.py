"""`cbtui bench ui`: the figures it prints are computed right, and the whole command runs."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cbtui.bench.cli import bench
from cbtui.bench.ui import big_step_shapes, latency_figures, time_frames


def test_big_step_shapes_are_8192_queries_over_16384_keys():
    for items in big_step_shapes().values():
        assert sum(i.num_tokens for i in items) == 8192
        assert sum(i.key_len for i in items) == 16384


def fake_clock(durations_ms):
    """A clock read twice per frame (before and after) whose frames take the given times."""
    ticks = []
    now = 0.0
    for ms in durations_ms:
        ticks += [now, now + ms / 1000]
        now += 1.0
    reads = iter(ticks)
    return lambda: next(reads)


def test_time_frames_keeps_the_cold_frame_out_of_the_median_and_worst():
    cold, median, worst = time_frames(big_step_shapes()["64 prefill chunks"], 40, 10, repeat=4,
                                      clock=fake_clock([50, 3, 1, 4, 2]))
    assert (cold, median, worst) == pytest.approx((50, 2.5, 4))


def test_latency_figures_from_known_latencies():
    assert latency_figures([10, 30, 20]) == (20, 30, 30)
    assert latency_figures(range(1, 21)) == (10.5, 18, 20)  # 18 of 20 presses at or below 18 ms
    assert latency_figures([5]) == (5, 5, 5)
    # Few presses: p90 is the slower one, not the faster (it read 26 ms under a 92 ms median).
    assert latency_figures([159.0, 26.1]) == (92.55, 159.0, 159.0)
    with pytest.raises(ValueError):
        latency_figures([])


@given(st.lists(st.floats(0, 1e4), min_size=1, max_size=50))
def test_latency_figures_are_ordered_and_p90_is_one_of_the_latencies(values):
    median, p90, worst = latency_figures(values)
    assert median <= p90 <= worst == max(values)
    assert p90 in values
    assert sum(v <= p90 for v in values) >= 0.9 * len(values)


def test_the_command_runs_at_a_small_size():
    threads = torch.get_num_threads()  # the bench leaves a core for the UI, as the dashboard does
    try:
        result = CliRunner().invoke(bench, ["ui", "--repeat", "2", "--presses", "2", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    frames = re.findall(r"cold +([\d.]+) ms +median +([\d.]+) ms +worst +([\d.]+) ms", result.output)
    assert len(frames) == 2 * len(big_step_shapes())  # each shape at two panel sizes
    keys = re.findall(r"(header shows it|engine took it) +median +([\d.]+) ms +p90 +([\d.]+) ms +worst +([\d.]+) ms",
                      result.output)
    assert [k[0] for k in keys] == ["header shows it", "engine took it"]
    for _, median, p90, worst in keys:
        assert 0 < float(median) <= float(p90) <= float(worst)
    assert re.search(r"on screen, worst [\d.]+ ms: (meets|MISSES) the goal", result.output)
