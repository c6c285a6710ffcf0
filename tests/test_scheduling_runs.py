"""Scheduler invariants on whole engine runs, read from StepRecords alone (the scheduler on its own,
without torch, is tested in test_scheduler.py)."""

from helpers import run_batched
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, EngineConfig
from engine.records import REASON_BUDGET, REASON_DECODE_CAP, REASON_NOT_ARRIVED

workload_st = st.lists(st.fixed_dictionaries({
    "prompt": st.lists(st.integers(0, 255), min_size=1, max_size=50),
    "max_new_tokens": st.integers(1, 10),
    "arrival_step": st.integers(0, 15),
}), min_size=1, max_size=10)


def check_invariants(config: EngineConfig, workload: list[dict]) -> None:
    outputs, records, eng = run_batched(config, workload)
    arrival = {i: w["arrival_step"] for i, w in enumerate(workload)}
    for rec in records:
        used = rec.decode_tokens + rec.prefill_tokens
        assert used <= rec.budget == config.scheduler.max_tokens_per_step
        assert rec.unused_tokens == rec.budget - used
        assert used == rec.num_query_tokens
        kinds = [item.kind for item in rec.items]
        assert kinds == sorted(kinds, key=lambda k: k != "decode"), "decodes come first in the batch"
        decodes = [item for item in rec.items if item.kind == "decode"]
        if config.scheduler.max_decode_per_step is not None:  # the cap counts requests; drafts are not decodes
            assert len(decodes) <= config.scheduler.max_decode_per_step
        k = config.speculation.num_speculative_tokens if config.speculation else 0
        for item in rec.items:
            assert arrival[item.request_id] <= rec.step, "scheduled before arrival"
            assert item.key_len == item.first_pos + item.num_tokens
            if item.kind == "decode":  # its own token, then the drafts it verifies
                assert item.num_tokens == 1 + item.drafts and 0 <= item.accepted <= item.drafts <= k
            else:
                assert item.num_tokens <= config.scheduler.prefill_chunk_size and item.drafts == 0
        assert rec.decode_tokens == len(decodes) + rec.draft_tokens
        check_draft_budget(config, rec, decodes)
        # Decodes first: a decode left out for budget means no prefill took budget in this step.
        reasons = {v.id: v.reason for v in rec.requests}
        if any(r == REASON_BUDGET for rid, r in reasons.items()
               if any(v.id == rid and v.state == "decode" for v in rec.requests)):
            assert rec.prefill_tokens == 0
            assert rec.draft_tokens == 0, "drafts shrink to none before a decode is left out"
        # Without preemption, the decodes are exactly what demand, cap and budget allow.
        if not rec.preempted:
            cap = config.scheduler.max_decode_per_step or rec.budget
            assert len(decodes) == min(rec.decode_demand, cap, rec.budget)
        scheduled = {item.request_id for item in rec.items}
        for view in rec.requests:
            if view.state != "finished" and view.id not in scheduled:
                assert view.reason, f"request {view.id} not scheduled at step {rec.step} without a reason"
            if view.id in scheduled:
                assert view.reason is None
            if view.arrival_step > rec.step:
                assert view.state == "pending" and view.reason == REASON_NOT_ARRIVED
    finished = all(len(out) == w["max_new_tokens"] for out, w in zip(outputs, workload, strict=True))
    assert finished, "every request finishes"
    assert records[-1].finished_total == len(workload)


def check_draft_budget(config: EngineConfig, rec, decodes) -> None:
    """The speculative budget rule, for a draft model (it always has k guesses): drafts come from
    what the decodes leave, before any prefill chunk, spread one level at a time. Not checked with a
    tight pool, where a draft that would need a block no one has is not proposed."""
    if config.speculation is None or config.speculation.method != "draft" or config.cache.num_blocks is not None:
        return
    views = {v.id: v for v in rec.requests}
    want = {}
    for item in decodes:  # drafts it could use: k, and one fewer than the tokens it still may generate
        v = views[item.request_id]
        before = v.generated - item.accepted - 1
        want[item.request_id] = min(config.speculation.num_speculative_tokens, v.max_new_tokens - before - 1)
    short = [i for i in decodes if i.drafts < want[i.request_id]]
    if short:  # the budget ran out on drafts: none for prefills, and levels at most one apart
        assert rec.prefill_tokens == 0 and rec.unused_tokens == 0
        lowest = min(i.drafts for i in short)
        assert all(i.drafts <= lowest + 1 for i in decodes)


@settings(max_examples=40, deadline=None)
@given(workload_st, st.integers(1, 40), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 5)),
       st.sampled_from(["paged", "dense"]), st.booleans(), st.sampled_from([None, None, "ngram", "draft"]),
       st.integers(1, 6))
def test_invariants_hold(workload, budget, chunk, cap, layout, tight_pool, speculative, k):
    largest = max(len(w["prompt"]) + w["max_new_tokens"] for w in workload)
    num_blocks = -(-largest // 4) + 1 if (layout == "paged" and tight_pool) else None
    config = EngineConfig(model="tiny", device="cpu", max_tokens_per_step=budget, prefill_chunk_size=chunk,
                          max_decode_per_step=cap, kv_layout=layout, block_size=4, num_blocks=num_blocks,
                          attention="sdpa", speculative=speculative, num_speculative_tokens=k)
    check_invariants(config, workload)


def test_a_tight_budget_shrinks_drafts_before_leaving_a_decode_out():
    """Four decodes, k = 4, a draft model (always 4 guesses): a budget of 6 runs all four decodes
    and spreads the 2 tokens left over the first two (one draft each); a budget of 3 runs three
    decodes and no drafts."""
    for budget, decodes, drafts in ((6, 4, [1, 1, 0, 0]), (3, 3, []), (12, 4, [2, 2, 2, 2]), (64, 4, [4, 4, 4, 4])):
        eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=64, speculative="draft",
                                  num_speculative_tokens=4))
        for i in range(4):
            eng.add_request([i + 1, 2, 3], max_new_tokens=10)
        eng.step()  # all four prefill in one step
        state = eng.scheduler.state(1)
        state.budget = budget  # as a scheduler plugin may set it
        plan = eng.scheduler.schedule(state=state)
        assert len(plan.decodes) == decodes
        assert sorted((plan.drafts.get(r, 0) for r in plan.decodes), reverse=True) == (drafts or [0] * decodes)
        assert plan.used <= budget


def test_decode_cap_leaves_decodes_waiting_with_a_reason():
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=64, max_decode_per_step=2))
    for i in range(5):
        eng.add_request([i + 1, 2, 3], max_new_tokens=4)
    eng.step()  # all five prefill in one step
    rec = eng.step()
    assert rec.decode_demand == 5 and rec.decode_tokens == 2
    capped = [v for v in rec.requests if v.reason == REASON_DECODE_CAP]
    assert len(capped) == 3


def test_budget_limits_decodes_before_prefill():
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=3, prefill_chunk_size=8))
    for i in range(3):
        eng.add_request([i + 1], max_new_tokens=5)
    eng.step()  # three 1-token prompts fill the budget of 3
    late = eng.add_request([9, 9, 9, 9], max_new_tokens=2, arrival_step=1)
    rec = eng.step()
    assert rec.decode_tokens == 3 and rec.prefill_tokens == 0
    assert next(v for v in rec.requests if v.id == late).reason == REASON_BUDGET


def test_static_policy_runs_one_batch_to_the_end_before_the_next():
    workload = [{"prompt": [i + 1] * (3 + i), "max_new_tokens": 2 + 3 * (i % 2), "arrival_step": 0}
                for i in range(6)]
    config = EngineConfig(model="tiny", device="cpu", policy="static", static_batch_size=3,
                          max_tokens_per_step=64)
    _, records, eng = run_batched(config, workload)
    first_batch = {0, 1, 2}
    last_first_batch_step = max(eng.requests[i].finished_step for i in first_batch)
    for rec in records:
        for item in rec.items:
            if item.request_id not in first_batch:
                assert rec.step > last_first_batch_step
    assert any(rec.padding_slots > 0 for rec in records), "finished members idle their slots"
    fcfs_steps = len(run_batched(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=64,
                                              static_batch_size=3), workload)[1])
    assert len(records) > fcfs_steps


def test_static_padding_counts_the_slots_idle_in_the_step_itself():
    """A member that finishes in a step ran in it: its slot turns to padding from the next step on, and
    the step where the last member decodes alone has every other slot idle. (static_vs_continuous:
    step 3 had 'decode 4' and 1 slot of padding, five slots in a batch of four; step 8, 'decode 1' and
    no padding.)"""
    from scenarios import load_scenario

    engine = load_scenario("static_vs_continuous").build_engine(device="cpu")
    size = engine.config.scheduler.static_batch_size
    records = [engine.step() for _ in range(16)]
    for rec in records:
        ran = len({item.request_id for item in rec.items})
        assert ran + rec.padding_slots <= size, f"step {rec.step}: {ran} ran, padding {rec.padding_slots}"
        if rec.items and all(item.kind == "decode" for item in rec.items):  # the batch is all admitted
            assert ran + rec.padding_slots == size, f"step {rec.step}: {ran} ran, padding {rec.padding_slots}"
    padding = {rec.step: rec.padding_slots for rec in records}
    assert (padding[3], padding[4], padding[7], padding[8], padding[9]) == (0, 1, 1, 3, 0)


def test_idle_steps_until_arrival():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    rid = eng.add_request([1, 2], max_new_tokens=1, arrival_step=3)
    recs = [eng.step() for _ in range(3)]
    assert all(not r.items and r.pending == 1 for r in recs)
    assert eng.has_unfinished()
    rec = eng.step()
    assert rec.items[0].request_id == rid and not eng.has_unfinished()
