"""Greedy outputs under continuous batching equal each request run alone, whatever the settings."""

import torch
from helpers import exact_config, run_alone, run_batched
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import EngineConfig
from engine.attention import available_backends

BACKENDS = available_backends(torch.device("cpu"))

request_st = st.fixed_dictionaries({
    "prompt": st.lists(st.integers(0, 255), min_size=1, max_size=40),
    "max_new_tokens": st.integers(1, 12),
    "arrival_step": st.integers(0, 8),
})


@st.composite
def scenario_st(draw):
    workload = draw(st.lists(request_st, min_size=1, max_size=6))
    layout = draw(st.sampled_from(["paged", "dense"]))
    block_size = draw(st.integers(1, 8))
    num_blocks = None
    if layout == "paged" and draw(st.booleans()):
        # A pool just big enough for the largest request: forces preemption under load.
        largest = max(len(r["prompt"]) + r["max_new_tokens"] for r in workload)
        num_blocks = -(-largest // block_size) + draw(st.integers(0, 3))
    config = exact_config(
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
