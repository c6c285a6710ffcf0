"""Changing one request's prompt never changes another request's output."""

from helpers import exact_config, run_batched
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=20)
@given(st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=24), min_size=2, max_size=5),
       st.data())
def test_other_prompts_do_not_leak(prompts, data):
    victim = data.draw(st.integers(0, len(prompts) - 1))
    changed = data.draw(st.lists(st.integers(0, 255), min_size=1, max_size=24))
    config = exact_config(max_tokens_per_step=data.draw(st.integers(2, 32)), prefill_chunk_size=5,
                          block_size=4, attention=data.draw(st.sampled_from(["reference", "sdpa"])))
    base = [{"prompt": p, "max_new_tokens": 6, "arrival_step": i % 3} for i, p in enumerate(prompts)]
    altered = [dict(w) for w in base]
    altered[victim]["prompt"] = changed
    out_a, _, _ = run_batched(config, base)
    out_b, _, _ = run_batched(config, altered)
    for i in range(len(prompts)):
        if i != victim:
            assert out_a[i] == out_b[i]
