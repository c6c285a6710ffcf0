"""More requests hold blocks at once than the paged store's host table mirror has rows (64 at
first): the mirror doubles, and the request that made it grow gets its row in the new one (it
was written into the old array, an IndexError at the 65th; found by `cbtui bench api`)."""

from __future__ import annotations

from engine import Engine, EngineConfig


def test_a_hundred_requests_running_at_once_match_each_alone():
    config = EngineConfig(model="tiny", device="cpu", max_tokens_per_step=2048, prefill_chunk_size=32)
    engine = Engine(config)
    prompts = [list(f"request {i:03d}".encode()) for i in range(100)]
    ids = [engine.add_request(p, max_new_tokens=4) for p in prompts]
    first = engine.step()
    assert first is not None and first.running == 100  # every one admitted in one step: 100 rows
    out = engine.run_until_done()
    for rid, prompt in zip(ids[::33], prompts[::33], strict=True):
        alone = Engine(config)
        one = alone.add_request(prompt, max_new_tokens=4)
        assert alone.run_until_done()[one] == out[rid]
