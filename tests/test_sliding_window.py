"""sliding_window: an AttentionPlugin (wrap) with sinks + window; exact within it, lossy past it, and
the mask panel draws the band from the record's attention_window."""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_plugins

from cbtui.render.mask_raster import rasterize
from engine.batch_builder import build_batch, mask_from_items, window_mask
from engine.plugins.builtin import SlidingWindowPlugin
from engine.records import ScheduledItem
from scenarios import load_scenario
from scenarios.compare import run_records


def random_items(rng):
    items = []
    for i in range(rng.randint(1, 4)):
        first, n = rng.randint(0, 40), rng.randint(1, 12)
        items.append(ScheduledItem(i, "prefill" if n > 1 else "decode", first, n, first + n))
    return items


def test_the_raster_counts_exactly_the_cells_the_window_allows():
    rng = random.Random(7)
    for _ in range(150):
        items, window = random_items(rng), (rng.randint(0, 5), rng.randint(1, 20))
        mask = np.array(mask_from_items(items, window))
        full = rasterize(items, mask.shape[0], mask.shape[1], max_magnify=1, window=list(window))
        assert (full.count == mask).all()
        # (a row for each item at least: with fewer rows than items, some are not drawn)
        small = rasterize(items, max(len(items), mask.shape[0] // 3), max(1, mask.shape[1] // 4), max_magnify=1,
                          window=list(window))
        assert small.count.sum() == mask.sum()
    causal = np.array(mask_from_items(items))
    assert rasterize(items, *causal.shape, max_magnify=1).count.sum() == causal.sum()


def test_the_engine_mask_is_the_metadata_mask():
    items = [ScheduledItem(0, "prefill", 30, 10, 40), ScheduledItem(1, "decode", 50, 1, 51)]
    batch = build_batch(items, [[1] * 10, [2]], [True, True], torch.device("cpu"))
    assert window_mask(batch, 2, 8).tolist() == mask_from_items(items, (2, 8))


WORKLOAD = [{"prompt": [(7 * i + j) % 250 + 1 for j in range(20 + 6 * i)], "max_new_tokens": 10,
             "arrival_step": i} for i in range(4)]
BATCHED = dict(max_tokens_per_step=24, prefill_chunk_size=8, block_size=4, num_blocks=64)


def test_exact_while_sequences_fit_in_sinks_plus_window():
    longest = max(len(r["prompt"]) + r["max_new_tokens"] for r in WORKLOAD)
    full, _ = run_plugins([], WORKLOAD, **BATCHED)
    windowed, records = run_plugins([SlidingWindowPlugin(window=longest - 4, sinks=4)], WORKLOAD, **BATCHED)
    assert windowed == full
    assert records[-1].attention_window == [4, longest - 4]


def test_lossy_past_the_window_but_still_isolated_under_continuous_batching():
    # A narrow window changes outputs, yet each request's output under continuous batching (chunks,
    # preemption) equals that request run alone with the same window: requests stay isolated.
    batched, _ = run_plugins([SlidingWindowPlugin(window=6, sinks=2)], WORKLOAD, **{**BATCHED, "num_blocks": 14})
    full, _ = run_plugins([], WORKLOAD, **BATCHED)
    assert batched != full
    for spec, out in zip(WORKLOAD, batched, strict=True):
        alone, _ = run_plugins([SlidingWindowPlugin(window=6, sinks=2)], [{**spec, "arrival_step": 0}],
                       max_tokens_per_step=4096, prefill_chunk_size=4096, kv_layout="dense")
        assert out == alone[0]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="window=0"):
        SlidingWindowPlugin(window=0)
    with pytest.raises(ValueError, match="sinks=-1"):
        SlidingWindowPlugin(sinks=-1)


@pytest.mark.slow
def test_the_scenario_draws_a_band_and_reports_its_divergence():
    scenario = load_scenario("sliding_window")
    record = next(r for r in run_records(scenario) if any(i.num_tokens == 48 for i in r.items))
    assert record.attention_window == [4, 24]
    banded = rasterize(record.items, 400, 400, max_magnify=1, window=record.attention_window)
    causal = rasterize(record.items, 400, 400, max_magnify=1)
    assert banded.count.sum() < causal.count.sum()  # the panel draws fewer cells: the band
    assert all(r.attention_window is None for r in run_records(scenario, "full", max_steps=3))
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "sliding_window", "--headless"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stdout.splitlines() if line.startswith("sliding_window: "))
    differ, total = int(line.split()[1]), int(line.split()[3])
    assert total == sum(r["max_new_tokens"] for r in scenario.requests) and 0 < differ <= total
    assert line.endswith("differ from the run without it (lossy)")


@pytest.mark.parametrize("window", [[4], [4, 0], [1, 2, 3]])
def test_a_recording_with_a_bad_attention_window_is_refused(window):
    import json

    from engine.records.record_line import parse_record

    record = run_records(load_scenario("sliding_window"), max_steps=1)[0]
    data = record.to_dict()
    assert data["attention_window"] == [4, 24]
    parse_record(json.dumps(data))  # as recorded: fine
    data["attention_window"] = window
    with pytest.raises(ValueError, match="attention_window"):
        parse_record(json.dumps(data))
