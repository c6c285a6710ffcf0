"""The block manager and the stores: blocks shared only through the prefix cache, everything returns,
flatten equals dense."""

from collections import Counter

import torch
from helpers import exact_config, run_batched
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import Engine, EngineConfig


@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 8), st.integers(0, 6)), min_size=1, max_size=8),
       st.integers(1, 6), st.booleans())
def test_blocks_shared_only_by_the_prefix_cache_and_all_returned(reqs, block_size, caching):
    """The prompts are all ones, so every full prompt block has a twin: with prefix caching the
    record says which blocks are shared and by how many, without it no block has two owners."""
    largest = max(p + n for p, n, _ in reqs)
    config = EngineConfig(model="tiny", device="cpu", kv_layout="paged", block_size=block_size,
                          num_blocks=-(-largest // block_size) + 2, max_tokens_per_step=16, attention="sdpa",
                          prefix_caching=caching)
    workload = [{"prompt": [1] * p, "max_new_tokens": n, "arrival_step": a} for p, n, a in reqs]
    _, records, eng = run_batched(config, workload)
    for rec in records:
        holders = Counter(b for table in rec.kv.block_tables.values() for b in table)
        shared = {str(b): n for b, n in holders.items() if n > 1}
        assert shared == (rec.kv.prefix.shared if caching else {}), f"step {rec.step}"
        assert rec.kv.blocks_used == len(holders)
        assert rec.kv.blocks_used + rec.kv.blocks_free == rec.kv.num_blocks
        for rid, table in rec.kv.block_tables.items():
            held = rec.kv.tokens.get(rid, 0)
            assert len(table) >= -(-held // block_size)
    assert eng.scheduler.blocks.num_free == eng.runner.num_blocks and not eng.scheduler.blocks.tables
    assert records[-1].kv.blocks_used == 0


def test_flatten_equals_dense_cache():
    workload = [{"prompt": list(range(3 + 5 * i)), "max_new_tokens": 4 + i} for i in range(4)]
    engines = {}
    for layout in ("paged", "dense"):
        eng = Engine(exact_config(kv_layout=layout, block_size=4, max_tokens_per_step=10, prefill_chunk_size=3))
        for w in workload:
            eng.add_request(**w)
        for _ in range(6):  # stop mid-run, while caches hold partial sequences
            eng.step()
        engines[layout] = eng
    paged, dense = engines["paged"], engines["dense"]
    held = paged.scheduler.kv_tokens
    assert held == dense.scheduler.kv_tokens and held
    assert held == {rid: dense.runner.kv.held(rid) for rid in held}
    for rid in held:
        for layer in range(paged.runner.spec.num_layers):
            pk, pv = paged.runner.kv.flatten(layer, rid, held[rid])
            dk, dv = dense.runner.kv.flatten(layer, rid)
            assert pk.shape[0] == held[rid]
            # Not bit-equal: paged decodes read the pool directly, dense ones read packed keys, and
            # the padded width changes the float64 summation order (ulps). A misplaced slot is O(1).
            assert torch.allclose(pk, dk, rtol=1e-12, atol=1e-12) and torch.allclose(pv, dv, rtol=1e-12, atol=1e-12)


def test_record_marks_freed_blocks():
    eng = Engine(EngineConfig(model="tiny", device="cpu", block_size=4))
    a = eng.add_request([1, 2, 3], max_new_tokens=1)
    rec = eng.step()
    assert rec.finished == [a] and a in rec.kv.freed and rec.kv.blocks_used == 0


def test_record_names_the_blocks_freed_in_the_step():
    eng = Engine(EngineConfig(model="tiny", device="cpu", block_size=4))
    a = eng.add_request([1] * 6, max_new_tokens=1)  # 6 prompt tokens: 2 blocks, done in one step
    b = eng.add_request([2] * 3, max_new_tokens=3)
    rec = eng.step()
    assert rec.finished == [a] and rec.kv.freed_blocks == {str(a): (0, 1)}
    assert str(b) in rec.kv.block_tables and str(b) not in rec.kv.freed_blocks
    rec = eng.step()
    assert rec.kv.freed_blocks == {}
