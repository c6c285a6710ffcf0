"""Prefix caching: requests share the KV blocks of a common prefix, outputs stay exact, and the pool's
books balance (reference counts, cached-free blocks, eviction) at every step."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from helpers import exact_config, run_alone
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from test_block_manager import check_pool, guard_eviction

from cbtui.render.colors import FULL, NONE
from cbtui.run.headless import HeadlessRun
from engine import Engine, EngineConfig
from engine.attention import available_backends
from engine.records import StepRecord
from engine.records.events import reused
from engine.records.metrics import MetricsCollector
from engine.records.recording import RecordingError, load_recording
from engine.records.schema import check_record_json
from engine.records.summary import format_table
from scenarios import load_scenario
from scenarios.compare import compare
from scenarios.errors import ScenarioError
from scenarios.loader import loads

BACKENDS = available_backends(torch.device("cpu"))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cbtui", *args], capture_output=True, text=True, timeout=300)






def run_checked(config: EngineConfig, workload: list[dict], monkeypatch=None):
    """Runs the workload batched, checking the pool after every step; (outputs, records, engine, evicted)."""
    eng = Engine(config)
    alloc = eng.scheduler.blocks
    evicted = guard_eviction(monkeypatch, alloc) if monkeypatch is not None else []
    ids = [eng.add_request(**spec) for spec in workload]
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
        check_pool(alloc)
        assert len(records) < 5_000
    assert not alloc.tables and all(n == 0 for n in alloc.ref_counts)
    assert alloc.num_free == alloc.num_blocks, "a block did not come back"
    return [eng.requests[i].output for i in ids], records, eng, evicted


@st.composite
def shared_prefix_case(draw):
    """Requests behind a few common prefixes, each cut at a random length (a whole prompt shared, a
    prompt that is another's prefix, nothing shared), in a pool small enough to evict and preempt."""
    bases = draw(st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=28), min_size=1, max_size=3))
    workload = []
    for _ in range(draw(st.integers(2, 7))):
        base = draw(st.sampled_from(bases))
        shared = base[:draw(st.integers(0, len(base)))]
        prompt = shared + draw(st.lists(st.integers(0, 255), min_size=0 if shared else 1, max_size=10))
        workload.append({"prompt": prompt, "max_new_tokens": draw(st.integers(1, 10)),
                         "arrival_step": draw(st.integers(0, 10))})
    block_size = draw(st.integers(1, 6))
    largest = max(len(r["prompt"]) + r["max_new_tokens"] for r in workload)
    config = exact_config(
        kv_layout="paged", prefix_caching=True, block_size=block_size,
        num_blocks=-(-largest // block_size) + draw(st.integers(0, 6)),
        max_tokens_per_step=draw(st.integers(1, 48)), prefill_chunk_size=draw(st.integers(1, 24)),
        max_decode_per_step=draw(st.one_of(st.none(), st.integers(1, 4))),
        attention=draw(st.sampled_from(BACKENDS)), policy=draw(st.sampled_from(["fcfs", "fcfs", "static"])),
        static_batch_size=draw(st.integers(1, 4)))
    return config, workload


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(shared_prefix_case())
def test_prefix_caching_outputs_equal_each_request_alone(case):
    config, workload = case
    with pytest.MonkeyPatch.context() as monkeypatch:
        outputs, records, _, _ = run_checked(config, workload, monkeypatch)
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"]), config
    for rec in records:  # a hit is never computed: each admission's first chunk starts after it
        for item in rec.items:
            hit = rec.kv.prefix.hits.get(str(item.request_id))
            if hit:
                assert item.first_pos == hit and item.first_pos % config.cache.block_size == 0


SYSTEM = [(13 * i + 5) % 256 for i in range(40)]
# Ten requests behind one system prompt, arriving over time, in a pool that cannot hold them all:
# hits, evictions and preemptions in one run.
CROWDED = (exact_config(kv_layout="paged", block_size=4, num_blocks=16, max_tokens_per_step=24, prefill_chunk_size=12,
                        attention="sdpa"),
           [{"prompt": SYSTEM[:40 - 3 * (i % 3)] + [200 + i] * (1 + i % 4), "max_new_tokens": 6 + 2 * (i % 5),
             "arrival_step": 2 * i} for i in range(10)])


def test_hits_evictions_and_preemptions_all_happen_and_outputs_stay_exact(monkeypatch):
    config, workload = CROWDED
    outputs, records, eng, evicted = run_checked(config, workload, monkeypatch)
    assert sum(r.kv.prefix.hit_blocks for r in records) >= 9 * 6  # each later request reuses 6 blocks or more
    assert evicted and sum(r.kv.prefix.evicted_blocks for r in records) == len(evicted)
    assert sum(len(r.preempted) for r in records) > 0
    assert any(r.kv.prefix.shared for r in records) and any(r.kv.prefix.cached for r in records)
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])


def test_a_hit_is_shared_and_skipped_by_prefill():
    eng = Engine(exact_config(block_size=4, max_tokens_per_step=64, prefill_chunk_size=64))
    a = eng.add_request(SYSTEM[:20] + [1, 2], max_new_tokens=3)
    b = eng.add_request(SYSTEM[:20] + [7], max_new_tokens=3, arrival_step=1)
    eng.step()
    rec = eng.step()  # b arrives: its 20 system tokens (5 blocks) are cached, its last token is computed
    item = next(i for i in rec.items if i.request_id == b)
    assert (item.first_pos, item.num_tokens) == (20, 1) and rec.prefill_tokens == 1
    assert rec.kv.block_tables[str(b)][:5] == rec.kv.block_tables[str(a)][:5]
    assert rec.kv.prefix.shared == {str(blk): 2 for blk in rec.kv.block_tables[str(a)][:5]}
    assert rec.kv.prefix.hits == {str(b): 20} and rec.kv.prefix.hit_blocks == 5
    view = next(v for v in rec.requests if v.id == b)
    assert view.cached_tokens == 20 and view.prefill_pos == 21
    assert [e.text for e in reused(rec, None)] == [f"request {b} reused 5 blocks (20 tokens) from the prefix cache"]


def test_one_reused_block_is_told_in_the_singular_in_the_events_and_the_headless_lines():
    eng = Engine(exact_config(block_size=4))
    eng.add_request(SYSTEM[:8], max_new_tokens=3)
    b = eng.add_request(SYSTEM[:4] + [7], max_new_tokens=2, arrival_step=1)  # one full block in common
    out = io.StringIO()
    records = list(HeadlessRun(eng, eng.header(), console=Console(file=out, width=80)))
    told = f"request {b} reused 1 block (4 tokens) from the prefix cache"
    assert [e.text for r in records for e in reused(r, None)] == [told]
    assert [line.strip() for line in out.getvalue().splitlines() if "reused" in line] == [told]


def test_a_whole_prompt_in_the_cache_still_computes_its_last_token():
    eng = Engine(exact_config(block_size=4))
    eng.add_request(SYSTEM[:8], max_new_tokens=4)
    b = eng.add_request(SYSTEM[:8], max_new_tokens=4, arrival_step=3)
    records = [eng.step() for _ in range(4)]
    item = next(i for i in records[3].items if i.request_id == b)
    # Two full blocks match, but the second holds the last token: only the first is shared, so the
    # write of positions 4..7 goes to a block of b's own (no copy-on-write needed).
    assert (item.first_pos, item.num_tokens) == (4, 4) and records[3].kv.prefix.hits == {str(b): 4}
    assert eng.run_until_done()[b] == run_alone(SYSTEM[:8], 4)


def test_freed_blocks_stay_cached_and_a_later_request_revives_them():
    eng = Engine(exact_config(block_size=4, num_blocks=12, max_tokens_per_step=64, prefill_chunk_size=64))
    a = eng.add_request(SYSTEM[:17], max_new_tokens=1)
    rec = eng.step()
    assert rec.finished == [a] and rec.kv.blocks_used == 0
    first = rec.kv.freed_blocks[str(a)]
    assert sorted(rec.kv.prefix.cached) == sorted(first[:4])  # its 4 full blocks; the 5th, partial, is wiped
    assert rec.kv.blocks_free == 12  # cached-free blocks count as free: the pool may take them
    b = eng.add_request(SYSTEM[:16] + [9, 9], max_new_tokens=2)
    rec = eng.step()
    assert rec.kv.prefix.hits == {str(b): 16} and rec.kv.prefix.cached == ()
    assert rec.kv.block_tables[str(b)][:4] == first[:4]
    assert eng.run_until_done()[b] == run_alone(SYSTEM[:16] + [9, 9], 2)


def test_eviction_takes_the_least_recently_used_cached_block_first():
    eng = Engine(exact_config(block_size=4, num_blocks=6, max_tokens_per_step=64, prefill_chunk_size=64))
    old = eng.add_request([1] * 8 + [2], max_new_tokens=1)  # 2 full blocks, freed first
    eng.step()
    new = eng.add_request([3] * 8 + [4], max_new_tokens=1)
    eng.step()
    prefix = eng.scheduler.blocks.prefix
    old_blocks, new_blocks = list(prefix.evictable)[:2], list(prefix.evictable)[2:]
    assert len(new_blocks) == 2 and old != new
    big = eng.add_request([5] * 20, max_new_tokens=2)  # 5 blocks: the 2 free, the 2 oldest cached, 1 more
    rec = eng.step()
    assert rec.kv.prefix.evicted_blocks == 3 and list(rec.kv.prefix.cached) == new_blocks[1:]
    assert set(old_blocks) | {new_blocks[0]} <= set(rec.kv.block_tables[str(big)])


def test_admission_counts_only_the_blocks_a_hit_does_not_cover():
    """A pool with 3 blocks left admits a request of 6 blocks whose first 4 are shared; without
    prefix caching it waits for blocks."""
    for caching, waits in ((True, False), (False, True)):
        eng = Engine(exact_config(block_size=4, num_blocks=8, prefix_caching=caching, max_tokens_per_step=64,
                                  prefill_chunk_size=64))
        eng.add_request(SYSTEM[:17], max_new_tokens=8)  # 5 blocks, held while b arrives
        b = eng.add_request(SYSTEM[:16] + [1] * 5, max_new_tokens=2, arrival_step=1)
        eng.step()
        rec = eng.step()
        view = next(v for v in rec.requests if v.id == b)
        assert (view.reason == "no free KV blocks") is waits, caching


def test_a_hit_takes_no_budget():
    eng = Engine(exact_config(block_size=4, max_tokens_per_step=6, prefill_chunk_size=6))
    eng.add_request(SYSTEM[:24], max_new_tokens=1)
    eng.run_until_done()
    b = eng.add_request(SYSTEM[:24] + [3, 3], max_new_tokens=1)
    rec = eng.step()  # 24 tokens reused, 2 computed: one step of a 6-token budget does the whole prompt
    assert rec.kv.prefix.hit_tokens == 24 and rec.prefill_tokens == 2 and rec.finished == [b]


def test_preempted_request_reuses_its_own_cached_blocks():
    """Preemption drops references only: the victim's named blocks stay cached, and its recompute
    starts from them when nobody took them meanwhile."""
    config = exact_config(block_size=4, num_blocks=12, max_tokens_per_step=32, prefill_chunk_size=8)
    workload = [{"prompt": list(range(10 + i, 22 + i)), "max_new_tokens": 16} for i in range(3)]
    outputs, records, eng, _ = run_checked(config, workload)
    preempted = {rid for r in records for rid in r.preempted}
    reused = {int(rid) for r in records for rid in r.kv.prefix.hits}
    assert preempted & reused
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])








def test_config_default_is_on_for_paged_and_off_for_dense():
    assert EngineConfig(kv_layout="paged").caches_prefixes and not EngineConfig(kv_layout="dense").caches_prefixes
    assert not EngineConfig(kv_layout="paged", prefix_caching=False).caches_prefixes
    with pytest.raises(ValueError, match="prefix_caching=True needs kv_layout='paged'"):
        EngineConfig(kv_layout="dense", prefix_caching=True)
    with pytest.raises(ValueError, match="must be true, false or None"):
        EngineConfig(prefix_caching=1)
    assert Engine(exact_config(prefix_caching=False)).scheduler.blocks.prefix is None


def test_without_prefix_caching_nothing_is_shared_and_records_say_none():
    config = exact_config(block_size=4, prefix_caching=False)
    eng = Engine(config)
    for i in range(3):
        eng.add_request(SYSTEM[:20], max_new_tokens=2, arrival_step=i)
    while eng.has_unfinished():
        rec = eng.step()
        assert rec.kv.prefix is None
        blocks = [b for t in rec.kv.block_tables.values() for b in t]
        assert len(blocks) == len(set(blocks))
        assert all(v.cached_tokens == 0 for v in rec.requests)


def test_prefix_records_round_trip_through_json_and_feed_the_hit_rate():
    config, workload = CROWDED
    eng = Engine(config)
    for spec in workload:
        eng.add_request(**spec)
    metrics = MetricsCollector()
    hit = looked_up = 0
    while eng.has_unfinished():
        rec = eng.step()
        data = json.loads(json.dumps(rec.to_dict()))
        check_record_json(data)
        back = StepRecord.from_dict(data)
        assert back.kv.prefix == rec.kv.prefix
        assert [v.cached_tokens for v in back.requests] == [v.cached_tokens for v in rec.requests]
        metrics.observe(back)
        hit += rec.kv.prefix.hit_tokens
        looked_up += rec.kv.prefix.lookup_tokens
    cache = metrics.summary()["prefix_cache"]
    assert cache["prefill_tokens_saved"] == hit > 0
    assert cache["token_hit_rate"] == pytest.approx(hit / looked_up)
    assert 0 < cache["block_hit_rate"] <= 1


def test_a_recording_may_share_a_block_only_as_its_prefix_view_says(tmp_path):
    eng = Engine(exact_config(block_size=4))
    eng.add_request(SYSTEM[:12], max_new_tokens=3)
    eng.add_request(SYSTEM[:12], max_new_tokens=3, arrival_step=1)
    records = [eng.step().to_dict() for _ in range(3)]
    shared = records[1]["kv"]["prefix"]["shared"]
    assert shared
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert len(load_recording(path).records) == 3
    block = next(iter(shared))
    shared[block] = 3
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(RecordingError, match=f"step 1: KV block {block} is marked shared by 3 requests but 2 hold it"):
        load_recording(path)
    del shared[block]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(RecordingError, match=f"KV block {block} is held by requests 0 and 1 at once"):
        load_recording(path)


# -- scenarios, the compare table, the command line -----------------------------------------------

SMALL_SHARED = """
title = "small shared prefix"
seed = 4
[engine]
block_size = 4
num_blocks = 40
prefix_caching = true
[[generators]]
count = 4
prefix_len = 20
prompt_len = [1, 6]
max_new_tokens = 3
arrival = "uniform"
arrival_span = 6
[compare.no_cache]
prefix_caching = false
"""


def test_a_generator_prefix_is_shared_by_its_requests_only():
    s = loads(SMALL_SHARED + "[[generators]]\ncount = 2\nprefix_len = 20\n", "small.toml")
    first, second = s.requests[:4], s.requests[4:]
    assert len({tuple(r["prompt"][:20]) for r in first}) == 1 and len({tuple(r["prompt"][:20]) for r in second}) == 1
    assert first[0]["prompt"][:20] != second[0]["prompt"][:20]
    with pytest.raises(ScenarioError, match=r"\[\[generators\]\] #1 prompt_len: prompt \(4100 tokens\)"):
        loads(SMALL_SHARED.replace("prefix_len = 20", "prefix_len = 4094"), "small.toml")


def test_compare_shows_prefill_computed_cached_and_equal_outputs():
    rows = compare(loads(SMALL_SHARED, "small.toml"))
    cached, plain = rows
    assert cached.cached > 0 and plain.cached == 0 and cached.outputs == plain.outputs
    assert cached.prefill + cached.cached == plain.prefill  # nothing preempted: every prompt token once
    header = format_table(rows)[0].split()
    assert {"prefill", "cached", "outputs"} <= set(header)


@pytest.mark.slow
def test_cli_turns_prefix_caching_off_and_narrates_reuse(tmp_path):
    path = tmp_path / "small.toml"
    path.write_text(SMALL_SHARED)
    on = cli("scenario", str(path), "--headless")
    off = cli("scenario", str(path), "--headless", "--no-prefix-caching")
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "reused 5 blocks (20 tokens)" in on.stdout and "reused" not in off.stdout.split("comparison")[0]
    bad = cli("scenario", str(path), "--headless", "--kv-layout", "dense")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "prefix_caching=True needs kv_layout" in bad.stderr


# -- cbtui bench ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_shared_prefix_workload_runs_ours_with_and_without_prefix_caching():
    from cbtui.bench.run import run_systems
    from cbtui.bench.workloads import make_workload

    workload = make_workload("shared_prefix", scale=4 / 256, model="tiny", prompt_range=(2, 6), output_range=(2, 3))
    assert workload.shared_prefixes == (768, 256)
    heads = {tuple(p[:256]) for p in workload.prompts}
    assert len(heads) < workload.num_requests  # requests share a system prompt
    report = run_systems(workload, device="cpu", hf=False)
    rows = {s["system"]: s for s in report["systems"]}
    plain = rows["ours continuous, no prefix caching"]
    assert plain["available"] and plain["same_outputs_as_ours"] == 1.0 and "no prefix caching" in plain["note"]
    assert "prompt tokens" in rows["ours continuous"]["note"] and "from the cache" in rows["ours continuous"]["note"]
    assert report["workload"]["shared_prefixes"] == [768, 256]
    # The other workloads keep their rows: no prefix row without shared prefixes.
    other = run_systems(make_workload("varied", scale=2 / 256, model="tiny", prompt_range=(5, 8), output_range=(2, 3)),
                        device="cpu", hf=False)
    assert "ours continuous, no prefix caching" not in {s["system"] for s in other["systems"]}


# -- the dashboard --------------------------------------------------------------------------------

def first_hit_step() -> int:
    engine = load_scenario("shared_prefix").build_engine(device="cpu")
    return next(r.step for r in iter(engine.step, None) if r.kv.prefix.hits and r.kv.prefix.shared)


def test_kv_grid_draws_shared_and_cached_free_blocks_with_glyphs_of_their_own():
    from cbtui.widgets.kv_grid import CACHED_GLYPH, COUNT_GLYPHS, block_cells, paged_text

    config, workload = CROWDED
    _, records, _, _ = run_checked(config, workload)
    rec = next(r for r in records if r.kv.prefix.shared and r.kv.prefix.cached)
    cells = block_cells(rec.kv)
    assert {b: cells[b].shared for b in range(len(cells)) if cells[b].shared} == \
        {int(b): n for b, n in rec.kv.prefix.shared.items()}
    assert {b for b, c in enumerate(cells) if c.cached} == set(rec.kv.prefix.cached) - {
        b for blocks in rec.kv.freed_blocks.values() for b in blocks}  # freed in this step: a cross first
    for mode in (FULL, NONE):
        text = paged_text(rec.kv, 40, 8, None, mode).plain
        counts = {COUNT_GLYPHS[n - 1] for n in rec.kv.prefix.shared.values()}
        assert counts <= set(text) and CACHED_GLYPH in text
        assert f"shared {len(rec.kv.prefix.shared)}" in text and f"cached-free {len(rec.kv.prefix.cached)}" in text
    # The selected request's shared blocks are drawn in its colour.
    holder = max(int(r) for r, t in rec.kv.block_tables.items() if set(map(str, t)) & set(rec.kv.prefix.shared))
    block = next(b for b in rec.kv.block_tables[str(holder)] if str(b) in rec.kv.prefix.shared)
    assert block_cells(rec.kv, selected=holder)[block].owner == holder


def test_requests_table_shows_the_hit_length():
    from cbtui.widgets.requests_table import row_cells, table_columns, wanted_columns

    config, workload = CROWDED
    _, records, _, _ = run_checked(config, workload)
    view = next(v for r in records for v in r.requests if v.cached_tokens)
    assert "hit" in wanted_columns([view])  # the column appears once a request had a hit
    columns = table_columns({"hit"})
    hit = [key for key, _, _ in columns].index("hit")
    assert str(row_cells(view, NONE, columns)[hit]) == str(view.cached_tokens)
    fresh = next(v for v in records[0].requests)
    assert str(row_cells(fresh, NONE, columns)[hit]) == ""


def test_dashboard_mask_legend_marks_a_request_starting_from_cached_keys():
    import asyncio

    from dashboard_helpers import SteadyEngine, make_app, shown_step, wait_until

    from cbtui.widgets.mask_legend import HIT_MARK, MaskLegend

    target = first_hit_step()

    async def scenario():
        app = make_app(paused=True, engine=SteadyEngine(load_scenario("shared_prefix").build_engine(device="cpu")))
        async with app.run_test(size=(160, 48)) as pilot:
            await wait_until(pilot, lambda: shown_step(app) == 0)
            for step in range(1, target + 1):
                await pilot.press("n")
                await wait_until(pilot, lambda step=step: shown_step(app) == step)
            record = app.history.current()
            rid, tokens = next(iter(record.kv.prefix.hits.items()))
            # The panels follow the record within a frame or two.
            await wait_until(pilot, lambda: f"{rid}p{HIT_MARK}{tokens}" in str(app.query_one(MaskLegend).render()))
            item = next(i for i in record.items if str(i.request_id) == rid)
            assert item.first_pos == tokens  # its rows start at the first key it did not take from the cache
    asyncio.run(scenario())


def test_metrics_screen_says_the_hit_rate_and_the_prefill_saved():
    from rich.console import Console

    from cbtui.render.metrics_view import render_metrics
    from engine.profiling.memory_profiler import MemoryProfiler
    from engine.profiling.sources import FunctionSource

    engine = load_scenario("shared_prefix").build_engine(device="cpu")
    collector = MetricsCollector()
    profiler = MemoryProfiler(sources=[FunctionSource("fake", lambda: {"fake": 1 << 20})])
    for record in iter(engine.step, None):
        collector.observe(record)
        profiler.observe(record)
        if not engine.has_unfinished():
            break
    cache = collector.summary()["prefix_cache"]
    console = Console(width=100, record=True, color_system=None)
    console.print(render_metrics(collector, profiler, [], width=100))
    text = " ".join(console.export_text().split())
    assert (f"prefix cache: {cache['token_hit_rate']:.0%} of admitted tokens hit, {cache['block_hit_rate']:.0%} of "
            f"full blocks; {cache['prefill_tokens_saved']} prefill tokens saved") in text
    assert cache["prefill_tokens_saved"] == 2816  # as the scenario's description says


def test_overlapped_steps_share_prefixes_and_stay_exact():
    """Overlapped, a step is scheduled before the previous one's tokens are read back: admission
    names only tokens it knows (a placeholder ends the chain), and the outputs stay exact."""
    config, workload = CROWDED
    eng = Engine(exact_config(**{**config.__dict__, "overlap_steps": True, "dtype": "float64"}))
    ids = [eng.add_request(**spec) for spec in workload]
    records = []
    while eng.has_unfinished():
        record = eng.step()
        if record is not None:
            records.append(record)
        check_pool(eng.scheduler.blocks)
    assert sum(r.kv.prefix.hit_blocks for r in records) >= 9 * 6
    for rid, spec in zip(ids, workload, strict=True):
        assert eng.requests[rid].output == run_alone(spec["prompt"], spec["max_new_tokens"])
