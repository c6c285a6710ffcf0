"""Every built-in scenario loads, runs to completion on the CPU, is deterministic, and shows its effect.

Each effect is asserted from StepRecords (what the dashboard sees), comparing the scenario as
written against its [compare] variants where it claims a difference.
"""

from __future__ import annotations

import io
from functools import cache

import pytest
from rich.console import Console

from cbtui.run.headless import HeadlessRun
from engine.records.summary import final_views as summary_final_views
from engine.records.summary import summarize
from scenarios import builtin_names, load_scenario
from scenarios.compare import run_records

EXPECTED = {"mixed_load", "priority_sla", "decode_heavy", "long_prompt", "budget_sweep", "dense_vs_paged",
            "kv_pressure", "static_vs_continuous", "burst_arrivals", "speculative"}
MAX_STEPS = 120  # "a few dozen steps": a scenario's point must not need a long watch
# On the CPU, as in CI, even on a GPU machine: the token-for-token comparisons below are claims
# about float32 greedy decoding, and bf16 GPU kernels may round differently across chunkings.
DEVICE = "cpu"



@cache
def records(name: str, variant: str | None = None):
    """The scenario as written runs through the headless printer; variants as compare runs them."""
    scenario = load_scenario(name)
    if variant is None:
        out = io.StringIO()
        engine = scenario.build_engine(device=DEVICE)
        recs = list(HeadlessRun(engine, scenario.header(engine), max_steps=MAX_STEPS + 1,
                                console=Console(file=out, width=100)))
        assert out.getvalue().startswith(scenario.title) and "summary:" in out.getvalue()
        return tuple(recs)
    return tuple(run_records(scenario, variant, max_steps=MAX_STEPS + 1, device=DEVICE))


def summary(name: str, variant: str | None = None):
    return summarize(list(records(name, variant)))


def final_views(name: str, variant: str | None = None):
    return summary_final_views(records(name, variant))


def comparable(rec) -> dict:
    """A record without the fields that measure the machine (time, memory)."""
    data = rec.to_dict()
    for measured in ("wall_time_s", "record_time_s", "device_time_s", "memory"):
        data.pop(measured)
    for shard in data["shards"]:  # sharded runs: each shard's process memory, time in collectives
        shard.pop("memory_bytes")
    if data["comm"] is not None:
        data["comm"].pop("seconds")
    return data


# -- every scenario ----------------------------------------------------------------------------

def test_the_issue_scenarios_are_all_built_in():
    assert set(builtin_names()) >= EXPECTED


@pytest.mark.parametrize("name", builtin_names())
def test_scenario_has_its_texts(name):
    s = load_scenario(name)
    assert s.title and s.description and s.question
    assert s.summary and "\n" not in s.summary and len(s.summary) <= 72
    assert s.question.endswith("?")


@pytest.mark.slow
@pytest.mark.parametrize("name", builtin_names())
def test_scenario_and_variants_run_to_completion(name):
    s = load_scenario(name)
    for variant in [None, *s.variants]:
        recs = records(name, variant)
        assert len(recs) <= MAX_STEPS, f"{name} {variant} needs {len(recs)} steps"
        views = summary_final_views(recs)
        assert all(v.state == "finished" for v in views.values()) and not recs[-1].pending
        assert len(views) == len(s.requests)


@pytest.mark.slow
@pytest.mark.parametrize("name", builtin_names())
def test_scenario_runs_are_identical(name):
    again = run_records(load_scenario(name), device=DEVICE)
    assert [comparable(r) for r in again] == [comparable(r) for r in records(name)]


def test_loading_twice_gives_the_same_workload():
    assert load_scenario("burst_arrivals").requests == load_scenario("burst_arrivals").requests


# -- mixed_load ---------------------------------------------------------------------------------

def test_mixed_load_requests_join_and_leave_at_token_boundaries():
    recs = records("mixed_load")
    mixed = [r for r in recs if {i.kind for i in r.items} == {"decode", "prefill"}]
    assert len(mixed) >= 5  # decodes and prefill chunks share steps
    first_run = {}
    for r in recs:
        for item in r.items:
            first_run.setdefault(item.request_id, r.step)
    first_finish = min(r.step for r in recs if r.finished)
    # Some request starts only after another has already left: nobody waited for a batch.
    assert any(step > first_finish for step in first_run.values())
    assert len({v.arrival_step for v in final_views("mixed_load").values()}) >= 5


def test_mixed_load_finished_requests_free_blocks_for_newcomers():
    owner, handed_on = {}, 0
    for r in records("mixed_load"):
        for rid, table in r.kv.block_tables.items():
            for block in table:
                handed_on += owner.get(block, rid) != rid
                owner[block] = rid
    assert handed_on >= 3
    assert summary("mixed_load").preemptions == 0  # freed by finishing, not by preemption


# -- speculative -------------------------------------------------------------------------------

def test_speculative_decodes_verify_drafts_and_take_fewer_steps_with_the_same_tokens():
    recs = records("speculative")
    assert any(i.drafts and 0 < i.accepted < i.drafts for r in recs for i in r.items), "partly accepted drafts"
    assert any(r.draft_tokens and r.prefill_tokens for r in recs), "speculating decodes beside prefill chunks"
    plain = final_views("speculative", "no_speculation")
    for variant in (None, "draft", "draft_self"):
        views = final_views("speculative", variant)
        assert {i: v.output_tail for i, v in views.items()} == {i: v.output_tail for i, v in plain.items()}
    assert summary("speculative").steps < summary("speculative", "no_speculation").steps
    assert summary("speculative", "draft_self").steps < summary("speculative").steps
    draft = summary("speculative", "draft")
    assert draft.drafts_accepted < draft.drafts_proposed / 10  # a random 'micro' draft rarely agrees


# -- decode_heavy -------------------------------------------------------------------------------

def test_decode_heavy_demand_exceeds_the_cap_and_decodes_wait():
    recs = records("decode_heavy")
    cap = recs[0].decode_cap
    assert cap == 8
    over = [r for r in recs if r.decode_demand > cap]
    assert len(over) >= 10
    assert all(r.decode_tokens <= cap for r in recs)
    assert all(r.decode_tokens == cap for r in over)
    waiting = [v for r in over for v in r.requests if v.reason == "decode cap"]
    assert len(waiting) >= len(over)  # every over-demand step shows waiting decodes


def test_decode_heavy_cap_keeps_prefill_room_for_late_arrivals():
    late = [i for i, v in final_views("decode_heavy").items() if v.arrival_step > 0]
    assert len(late) == 4

    def late_ttft(variant):
        views = final_views("decode_heavy", variant)
        return sum(views[i].ttft_steps for i in late) / len(late)

    assert late_ttft(None) + 5 <= late_ttft("decode_fills_budget")
    starved = [r for r in records("decode_heavy", "decode_fills_budget")
               if r.decode_tokens == r.budget and any(v.reason == "token budget spent" for v in r.requests)]
    assert starved  # decodes fill the whole budget while a late arrival waits
    # The cap's price: the same work takes more steps.
    assert summary("decode_heavy").steps > summary("decode_heavy", "decode_fills_budget").steps


# -- long_prompt --------------------------------------------------------------------------------

def test_long_prompt_is_prefilled_in_chunks():
    chunks = [i.num_tokens for r in records("long_prompt") for i in r.items
              if i.request_id == 0 and i.kind == "prefill"]
    assert chunks == [64] * 8


def test_long_prompt_smaller_chunks_give_short_requests_lower_ttft():
    def short_ttfts(variant):
        return [v.ttft_steps for i, v in final_views("long_prompt", variant).items() if i != 0]

    big, small = short_ttfts(None), short_ttfts("chunk_16")
    assert min(big) >= 3 and max(small) <= 1
    blocked = [v for r in records("long_prompt") for v in r.requests
               if v.id != 0 and v.reason == "token budget spent"]
    assert blocked
    # ... and the long prompt pays for it with its own first token later.
    long_ttft = [final_views("long_prompt", v)[0].ttft_steps for v in (None, "chunk_32", "chunk_16")]
    assert long_ttft[0] < long_ttft[1] < long_ttft[2]


# -- budget_sweep -------------------------------------------------------------------------------

def test_budget_sweep_bigger_budget_fewer_fuller_steps():
    s = load_scenario("budget_sweep")
    runs = sorted([None, *s.variants], key=lambda v: s.engine_config(v).scheduler.max_tokens_per_step)
    rows = [summary("budget_sweep", v) for v in runs]
    budgets = [s.engine_config(v).scheduler.max_tokens_per_step for v in runs]
    assert budgets == [16, 32, 64, 128]
    steps = [r.steps for r in rows]
    assert steps == sorted(steps, reverse=True) and len(set(steps)) == 4
    batches = [r.mean_batch for r in rows]
    assert batches == sorted(batches) and len(set(batches)) == 4
    ttft = [r.ttft_mean for r in rows]
    assert ttft == sorted(ttft, reverse=True)
    assert all(r.peak_batch <= b for r, b in zip(rows, budgets, strict=True))
    assert rows[0].peak_batch == 16 and rows[-1].peak_batch > 64


# -- dense_vs_paged -----------------------------------------------------------------------------

def test_dense_and_paged_schedule_and_sample_identically():
    paged, dense = records("dense_vs_paged"), records("dense_vs_paged", "dense")
    assert len(paged) == len(dense)
    for p, d in zip(paged, dense, strict=True):
        assert p.items == d.items
        assert p.sampled == d.sampled
        assert p.kv.tokens == d.kv.tokens


def test_paged_reserves_a_pool_of_blocks_dense_holds_exact_tokens():
    paged, dense = records("dense_vs_paged"), records("dense_vs_paged", "dense")
    assert len({r.kv.pool_bytes for r in paged}) == 1  # reserved up front
    assert len({r.kv.pool_bytes for r in dense}) > 5  # grows and shrinks with the tokens held
    assert max(r.kv.pool_bytes for r in dense) < paged[0].kv.pool_bytes
    tables = [t for r in paged for t in r.kv.block_tables.values()]
    assert any(t != list(range(t[0], t[0] + len(t))) for t in tables)  # blocks need not be contiguous
    for r in paged:
        for rid, table in r.kv.block_tables.items():
            slack = len(table) * r.kv.block_size - r.kv.tokens.get(rid, 0)
            assert 0 <= slack < r.kv.block_size or rid not in r.kv.tokens
    assert summary("dense_vs_paged").peak_kv_slots > summary("dense_vs_paged", "dense").peak_kv_slots


# -- kv_pressure --------------------------------------------------------------------------------

def test_kv_pressure_preempts_and_recomputes():
    tight, roomy = summary("kv_pressure"), summary("kv_pressure", "roomy")
    assert tight.preemptions >= 3 and tight.recomputed > 50
    assert roomy.preemptions == 0 and roomy.recomputed == 0
    assert tight.steps > roomy.steps
    recs = records("kv_pressure")
    assert any(v.reason == "preempted" for r in recs for v in r.requests)
    assert any(set(r.preempted) & set(r.kv.freed) for r in recs)
    assert all(r.kv.blocks_used <= 20 for r in recs)


def test_kv_pressure_preemption_does_not_change_outputs():
    s = load_scenario("kv_pressure")
    tight, roomy = s.build_engine(device=DEVICE), s.build_engine("roomy", device=DEVICE)
    assert tight.run_until_done() == roomy.run_until_done()


# -- static_vs_continuous -----------------------------------------------------------------------

def test_static_takes_more_steps_and_wastes_padding():
    static, cont = summary("static_vs_continuous"), summary("static_vs_continuous", "continuous")
    assert records("static_vs_continuous")[0].policy == "static"
    assert static.steps > cont.steps
    assert static.padding_slot_steps > 0 and cont.padding_slot_steps == 0


def test_static_batch_never_admits_past_its_size():
    for r in records("static_vs_continuous"):
        assert r.running <= 4


# -- burst_arrivals -----------------------------------------------------------------------------

def test_burst_arrivals_come_in_bursts_and_queue():
    views = final_views("burst_arrivals")
    per_step: dict[int, list] = {}
    for v in views.values():
        per_step.setdefault(v.arrival_step, []).append(v)
    bursts = [vs for vs in per_step.values() if len(vs) >= 4]
    assert len(bursts) >= 3
    recs = records("burst_arrivals")
    assert max(r.waiting for r in recs) >= 4
    # Later members of a burst wait for budget: TTFT spreads within each burst.
    assert all(max(v.ttft_steps for v in vs) - min(v.ttft_steps for v in vs) >= 3 for vs in bursts)
    quiet = [r for r in recs if r.unused_tokens > 0 and r.pending > 0]
    assert quiet  # between bursts the budget goes unused


def test_burst_arrivals_bigger_budget_absorbs_bursts():
    base, big = summary("burst_arrivals"), summary("burst_arrivals", "budget_96")
    assert big.ttft_max < base.ttft_max and big.ttft_mean < base.ttft_mean
    assert max(r.waiting for r in records("burst_arrivals", "budget_96")) < \
        max(r.waiting for r in records("burst_arrivals"))


# -- the numbers the descriptions state are the numbers a run gives -----------------------------

def _longest_cap_wait(recs) -> int:
    streak, best = {}, 0
    for r in recs:
        for v in r.requests:
            streak[v.id] = streak.get(v.id, 0) + 1 if v.reason == "decode cap" else 0
            best = max(best, streak[v.id])
    return best


def _late_ttfts(variant):
    views = final_views("decode_heavy", variant).values()
    ttfts = [v.ttft_steps for v in views if v.arrival_step > 0]
    return f"{min(ttfts)} to {max(ttfts)}"


def _stated_facts(name: str) -> list[str]:
    if name == "decode_heavy":
        recs = records(name)
        over = sum(r.decode_demand > r.decode_cap for r in recs)
        return [f"({over} of the {len(recs)} steps)", _steps_in_a_row(_longest_cap_wait(recs)),
                f"first token within {_late_ttfts(None)} steps",
                f"finishes sooner ({summary(name, 'decode_fills_budget').steps} steps)",
                f"starves them: {_late_ttfts('decode_fills_budget')} steps"]
    if name == "kv_pressure":
        tight, roomy = summary(name), summary(name, "roomy")
        return [f"{tight.preemptions} preemptions", f"{tight.recomputed} recomputed tokens",
                f"{tight.steps} steps instead of the {roomy.steps}"]
    if name == "shared_prefix":
        cached, plain = summary(name), summary(name, "no_cache")
        assert cached.outputs == plain.outputs and cached.cached > 0 and plain.cached == 0
        return [f"computes {cached.prefill} prefill tokens and takes {cached.cached} from the cache",
                f"`no_cache` variant computes {plain.prefill}", f"{plain.preemptions} preemptions",
                f"{plain.steps} steps instead of {cached.steps}"]
    if name == "static_vs_continuous":
        static, cont = summary(name), summary(name, "continuous")
        return [f"static run takes {static.steps} steps", f"wastes {static.padding_slot_steps} padding",
                f"continuous batching takes {cont.steps} steps with no padding"]
    if name == "burst_arrivals":
        return [f"TTFT up to {summary(name).ttft_max} steps",
                f"(TTFT at most {summary(name, 'budget_96').ttft_max} step"]
    if name == "speculative":
        spec, plain = summary(name), summary(name, "no_speculation")
        return [f"{spec.drafts_accepted} of {spec.drafts_proposed} drafts stand",
                f"takes {spec.steps} steps instead of {plain.steps}",
                f"(mean latency {spec.latency_mean:.0f} steps instead of {plain.latency_mean:.0f})"]
    if name == "long_prompt":
        long_ttft = " -> ".join(str(final_views(name, v)[0].ttft_steps) for v in (None, "chunk_32", "chunk_16"))
        shorts = [v.ttft_steps for i, v in final_views(name).items() if i != 0]
        return [f"({long_ttft} steps)", f"is {min(shorts)} to {max(shorts)} steps"]
    return []


def _steps_in_a_row(n: int) -> str:
    return f"waits more than {n} step{'' if n == 1 else 's'} in a row"


@pytest.mark.parametrize("name", ["decode_heavy", "kv_pressure", "static_vs_continuous", "burst_arrivals",
                                  "long_prompt", "speculative", "shared_prefix"])
def test_description_numbers_match_the_run(name):
    text = " ".join(load_scenario(name).description.split())
    for fact in _stated_facts(name):
        assert fact in text, f"{name}: description should say {fact!r}"
