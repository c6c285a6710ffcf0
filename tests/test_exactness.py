"""Greedy outputs under continuous batching equal each request run alone, whatever the settings."""

import torch
from helpers import exact_config, run_alone, run_batched
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import Engine, EngineConfig
from engine.attention import available_backends

BACKENDS = available_backends(torch.device("cpu"))

request_st = st.fixed_dictionaries({
    "prompt": st.lists(st.integers(0, 255), min_size=1, max_size=40),
    "max_new_tokens": st.integers(1, 12),
    "arrival_step": st.integers(0, 8),
})


def draw_kv_pool(draw, workload: list[dict]) -> tuple[str, int, int | None]:
    """(layout, block_size, num_blocks): dense, or a paged pool that is roomy (None) or just big
    enough for the largest request, which forces preemption under load."""
    layout = draw(st.sampled_from(["paged", "dense"]))
    block_size = draw(st.integers(1, 8))
    num_blocks = None
    if layout == "paged" and draw(st.booleans()):
        largest = max(len(r["prompt"]) + r["max_new_tokens"] for r in workload)
        num_blocks = -(-largest // block_size) + draw(st.integers(0, 3))
    return layout, block_size, num_blocks


@st.composite
def scenario_st(draw):
    workload = draw(st.lists(request_st, min_size=1, max_size=6))
    layout, block_size, num_blocks = draw_kv_pool(draw, workload)
    # Contiguous runs for some requests (those up to this length), pages for the rest.
    contiguous_up_to = draw(st.sampled_from([0, 0, 8, 24, 64])) if layout == "paged" else 0
    config = exact_config(
        contiguous_up_to=contiguous_up_to,
        max_tokens_per_step=draw(st.integers(1, 64)),
        prefill_chunk_size=draw(st.integers(1, 32)),
        max_decode_per_step=draw(st.one_of(st.none(), st.integers(1, 4))),
        kv_layout=layout, block_size=block_size, num_blocks=num_blocks,
        attention=draw(st.sampled_from(BACKENDS)),
        policy=draw(st.sampled_from(["fcfs", "fcfs", "static"])),
        static_batch_size=draw(st.integers(1, 4)),
    )
    return config, workload


# A pool too small for five requests at once: every run of the property test includes preemption.
PREEMPTING = (exact_config(kv_layout="paged", block_size=4, num_blocks=9, max_tokens_per_step=32,
                           prefill_chunk_size=8, attention="sdpa"),
              [{"prompt": list(range(10 + i, 30 + i)), "max_new_tokens": 12} for i in range(5)])


@settings(max_examples=60)
@given(scenario_st())
@example(PREEMPTING)
def test_batched_greedy_equals_alone(case):
    config, workload = case
    outputs, _, _ = run_batched(config, workload)
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"]), config


change_st = st.lists(st.tuples(
    st.integers(0, 12),  # the step it takes effect
    st.dictionaries(st.sampled_from(["max_tokens_per_step", "prefill_chunk_size", "max_decode_per_step", "policy",
                                     "static_batch_size"]),
                    st.integers(1, 48), min_size=1, max_size=3),
), max_size=4)


@settings(max_examples=40)
@given(scenario_st(), change_st)
def test_changing_settings_mid_run_keeps_greedy_outputs_exact(case, changes):
    """The budget, the chunk, the decode cap and the policy turned at any step change when tokens are
    computed, never which (issue #32)."""
    config, workload = case
    eng = Engine(config)
    ids = [eng.add_request(**spec) for spec in workload]
    for step, settings_ in changes:
        if "policy" in settings_:
            settings_ = {**settings_, "policy": "static" if settings_["policy"] % 2 else "fcfs"}
        eng.reconfigure(at_step=step, **settings_)
    outputs = eng.run_until_done()
    for rid, spec in zip(ids, workload, strict=True):
        assert outputs[rid] == run_alone(spec["prompt"], spec["max_new_tokens"]), (config, changes)


def test_preemption_happens_and_outputs_stay_exact():
    config, workload = PREEMPTING
    outputs, records, eng = run_batched(config, workload)
    assert sum(len(r.preempted) for r in records) > 0
    assert any(r.num_preemptions for r in eng.requests.values())
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])


def test_every_backend_and_layout_gives_the_same_tokens():
    workload = [{"prompt": [(7 * i + j) % 256 for j in range(5 + 3 * i)], "max_new_tokens": 8,
                 "arrival_step": i} for i in range(4)]
    results = set()
    for attention in BACKENDS:
        for layout in ("paged", "dense"):
            config = exact_config(attention=attention, kv_layout=layout, max_tokens_per_step=12,
                                  prefill_chunk_size=5, block_size=4)
            outputs, _, _ = run_batched(config, workload)
            results.add(tuple(tuple(o) for o in outputs))
    assert len(results) == 1
    assert list(list(o) for o in results.pop()) == [run_alone(w["prompt"], 8) for w in workload]


def test_text_prompt_is_byte_tokens():
    out_text, _, _ = run_batched(exact_config(), [{"prompt": "Hi there", "max_new_tokens": 5}])
    out_ids, _, _ = run_batched(exact_config(), [{"prompt": list(b"Hi there"), "max_new_tokens": 5}])
    assert out_text == out_ids and len(out_text[0]) == 5


def test_default_float32_engine_runs_and_is_deterministic():
    cfg = EngineConfig(model="tiny", device="cpu", seed=3)
    a, _, _ = run_batched(cfg, [{"prompt": "abc", "max_new_tokens": 6}, {"prompt": "xyz!", "max_new_tokens": 4}])
    b, _, _ = run_batched(cfg, [{"prompt": "abc", "max_new_tokens": 6}, {"prompt": "xyz!", "max_new_tokens": 4}])
    assert a == b and [len(x) for x in a] == [6, 4]


# -- speculative decoding ---------------------------------------------------------------------
# Prompts that repeat a short pattern (what prompt lookup finds) or are random; drafts from a lookup,
# from a smaller model ('micro': mostly rejected) or from the target's own preset ('tiny': every
# draft stands), so acceptance, rejection and rollback all run.
spec_request_st = st.fixed_dictionaries({
    "prompt": st.one_of(st.lists(st.integers(0, 255), min_size=1, max_size=30),
                        st.builds(lambda p, n: (p * n)[:40], st.lists(st.integers(0, 255), min_size=1, max_size=5),
                                  st.integers(2, 8))),
    "max_new_tokens": st.integers(1, 24),
    "arrival_step": st.integers(0, 6),
})


@st.composite
def speculative_st(draw):
    workload = draw(st.lists(spec_request_st, min_size=1, max_size=5))
    layout, block_size, num_blocks = draw_kv_pool(draw, workload)
    speculative = draw(st.sampled_from(["ngram", "ngram", "draft"]))
    config = exact_config(
        max_tokens_per_step=draw(st.integers(1, 48)),
        prefill_chunk_size=draw(st.integers(1, 32)),
        max_decode_per_step=draw(st.one_of(st.none(), st.integers(1, 4))),
        kv_layout=layout, block_size=block_size, num_blocks=num_blocks,
        attention=draw(st.sampled_from(BACKENDS)),
        speculative=speculative, num_speculative_tokens=draw(st.integers(1, 8)),
        draft_model=draw(st.sampled_from(["micro", "tiny"])),
        policy=draw(st.sampled_from(["fcfs", "fcfs", "static"])), static_batch_size=draw(st.integers(1, 4)),
    )
    return config, workload


SPEC_PREEMPTING = (exact_config(kv_layout="paged", block_size=2, num_blocks=16, max_tokens_per_step=24,
                                prefill_chunk_size=8, attention="sdpa", speculative="ngram", num_speculative_tokens=5),
                   [{"prompt": [3 + i, 9, 3 + i, 9, 3 + i, 9, 3 + i, 9], "max_new_tokens": 20} for i in range(5)]
                   + [{"prompt": list(range(40, 60)), "max_new_tokens": 8}])


@settings(max_examples=40, deadline=None)
@given(speculative_st())
@example(SPEC_PREEMPTING)
def test_speculative_greedy_equals_alone(case):
    config, workload = case
    outputs, records, eng = run_batched(config, workload)
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"]), config
    for rec in records:
        assert rec.num_query_tokens <= config.scheduler.max_tokens_per_step
        assert all(0 <= i.accepted <= i.drafts and i.num_tokens == 1 + i.drafts for i in rec.items if i.drafts)


def test_speculation_accepts_preempts_and_stays_exact():
    """The pinned case is not vacuous: drafts are accepted and rejected, and requests are
    preempted with speculation on."""
    config, workload = SPEC_PREEMPTING
    outputs, records, eng = run_batched(config, workload)
    assert sum(len(r.preempted) for r in records) > 0
    proposed, accepted = sum(r.draft_tokens for r in records), sum(r.accepted_tokens for r in records)
    assert 0 < accepted < proposed
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])


def test_a_draft_model_equal_to_the_target_has_every_draft_accepted():
    workload = [{"prompt": list(range(7 * i, 7 * i + 9)), "max_new_tokens": 15} for i in range(3)]
    config = exact_config(speculative="draft", draft_model="tiny", num_speculative_tokens=4, block_size=4)
    outputs, records, _ = run_batched(config, workload)
    assert sum(r.draft_tokens for r in records) == sum(r.accepted_tokens for r in records) > 0
    assert outputs == [run_alone(w["prompt"], 15) for w in workload]
    plain = run_batched(exact_config(block_size=4), workload)[1]
    assert len(records) < len(plain) / 2  # up to 5 tokens a step instead of 1


@settings(max_examples=15, deadline=None)
@given(speculative_st())
def test_rejected_drafts_leave_no_kv_behind(case):
    """After every step each running request holds exactly its computed tokens' KV: the blocks
    and slots of rejected drafts were released (the draft model's cache too)."""
    config, workload = case
    eng = Engine(config)
    for spec in workload:
        eng.add_request(**spec)
    while eng.has_unfinished():
        eng.step()
        blocks, store = eng.scheduler.blocks, eng.runner.kv
        for r in eng.scheduler.running:
            assert eng.scheduler.kv_tokens.get(r.id, 0) == r.num_computed
            if blocks is not None:
                assert len(blocks.tables[r.id]) == blocks.blocks_for(r.num_computed)
            else:
                assert store.held(r.id) == r.num_computed
            draft_kv = getattr(eng.speculator.proposer, "kv", None)
            if draft_kv is not None:
                assert draft_kv.held(r.id) <= r.num_computed
        if blocks is not None:  # each block held (once, however many tables share it) or free
            held = set().union(*blocks.tables.values())
            assert len(held) + blocks.num_free == blocks.num_blocks


def test_speculation_with_a_reserved_budget_slice_stays_exact():
    """The priority plugin keeps a slice of the budget for urgent requests: drafts respect it too."""
    from engine.plugins.builtin.priority import PriorityPlugin

    workload = [{"prompt": [2 + i, 7] * 6, "max_new_tokens": 16, "priority": i % 2, "arrival_step": i}
                for i in range(5)]
    config = exact_config(speculative="ngram", num_speculative_tokens=4, max_tokens_per_step=12, block_size=4)
    eng = Engine(config, plugins=[PriorityPlugin(reserve_tokens=6)])
    for spec in workload:
        eng.add_request(**spec)
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
    assert sum(r.accepted_tokens for r in records) > 0
    assert all(r.num_query_tokens <= 12 for r in records)
    for i, spec in enumerate(workload):
        assert eng.requests[i].output == run_alone(spec["prompt"], spec["max_new_tokens"])
