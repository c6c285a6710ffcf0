"""kv_window_evict: a CachePlugin (after_append) that gives back blocks a sliding window cannot see.
Same tokens as sliding_window, bounded blocks per request, fewer preemptions; records stay valid."""

import json

import pytest
from helpers import exact_config, run_plugins

from engine import Engine
from engine.plugins.builtin import KVWindowEvictPlugin, SlidingWindowPlugin
from engine.records.record_line import parse_record
from engine.records.recording import StoryCheck
from scenarios import load_scenario
from scenarios.compare import run_records

WORKLOAD = [{"prompt": [(5 * i + j) % 250 + 1 for j in range(10 + 3 * i)], "max_new_tokens": 60,
             "arrival_step": i} for i in range(3)]
SETTINGS = dict(max_tokens_per_step=16, prefill_chunk_size=8, block_size=4, kv_layout="paged", prefix_caching=False)


def test_same_tokens_as_the_window_with_bounded_blocks_and_valid_records():
    windowed, _ = run_plugins([SlidingWindowPlugin(window=8, sinks=2)], WORKLOAD, num_blocks=64, **SETTINGS)
    plugin = KVWindowEvictPlugin(window=8, sinks=2)
    evicting, records = run_plugins([plugin], WORKLOAD, num_blocks=64, **SETTINGS)
    assert evicting == windowed and plugin.evicted_blocks > 0
    story = StoryCheck()
    bound = -(-(2 + 8) // 4) + 2  # sinks + window, in blocks, plus the partial ones at both ends
    for record in records:
        live = {rid: len(t) - len(record.kv.evicted.get(rid, ())) for rid, t in record.kv.block_tables.items()}
        assert max(live.values(), default=0) <= bound
        assert record.kv.blocks_used == sum(live.values())
        again = parse_record(json.dumps(record.to_dict()))  # what a recording reads back: checked
        assert again.kv.evicted == {k: tuple(v) for k, v in record.kv.evicted.items()}
        story.check(again)
    assert any(record.kv.freed_blocks for record in records if not record.finished and not record.preempted)


def test_isolated_under_preemption_and_chunking():
    # A pool too small for six at once, even with eviction: preemption and recompute; each output
    # still equals that request run alone with the same plugin.
    workload = [{**spec, "arrival_step": 0} for spec in WORKLOAD * 2]
    batched, records = run_plugins([KVWindowEvictPlugin(window=8, sinks=2)], workload, num_blocks=20, **SETTINGS)
    assert any(r.preempted for r in records)
    for spec, out in zip(workload, batched, strict=True):
        alone, _ = run_plugins([KVWindowEvictPlugin(window=8, sinks=2)], [{**spec, "arrival_step": 0}], num_blocks=64,
                       **{**SETTINGS, "max_tokens_per_step": 4096, "prefill_chunk_size": 4096})
        assert out == alone[0]


def test_needs_a_paged_cache():
    with pytest.raises(ValueError, match="kv_layout"):
        Engine(exact_config(kv_layout="dense"), plugins=[KVWindowEvictPlugin()])


def test_the_scenario_runs_without_preemption_and_the_variants_do_not():
    scenario = load_scenario("kv_eviction")
    evicting, window_only = run_records(scenario), run_records(scenario, "window_only")
    assert sum(len(r.preempted) for r in evicting) == 0
    assert sum(len(r.preempted) for r in window_only) == 7 and (len(evicting), len(window_only)) == (74, 114)
    peak = max(len(t) - len(r.kv.evicted.get(rid, ())) for r in evicting for rid, t in r.kv.block_tables.items())
    assert peak <= 5  # the description's "at most 5 blocks"
    text = " ".join(scenario.description.split())
    assert "at most 5 blocks" in text and "in 74 steps" in text and "7 preemptions" in text and "114 steps" in text


@pytest.mark.parametrize("setting, words", [
    (dict(), "prefix caching"), (dict(prefix_caching=False, speculative="ngram"), "speculative")])
def test_combinations_it_cannot_run_with_are_refused_in_one_line(setting, words):
    with pytest.raises(ValueError, match=words):
        Engine(exact_config(kv_layout="paged", **setting), plugins=[KVWindowEvictPlugin()])
