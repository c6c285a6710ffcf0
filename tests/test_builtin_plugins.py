"""Adaptive batch sizing converges; int8 KV shrinks the cache and stays close to the full run."""

import pytest
import torch

from engine import Engine, EngineConfig
from engine.builtin_plugins import AdaptiveBatchPlugin, KVInt8Plugin
from engine.builtin_plugins.kv_int8 import token_divergence
from scenarios import ScenarioError, loads


def busy_engine(plugins, budget=16):
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=budget, prefill_chunk_size=64,
                              num_blocks=512), plugins=plugins)
    for i in range(40):
        eng.add_request([i % 200 + 1] * 200, max_new_tokens=30)
    return eng


def test_adaptive_budget_converges_to_the_latency_target():
    # Latency model: 2 ms fixed + 0.1 ms per token -> the 20 ms target is met at 180 tokens.
    plugin = AdaptiveBatchPlugin(target_ms=20, latency_fn=lambda rec: 0.002 + 0.0001 * rec.budget)
    eng = busy_engine([plugin])
    records = [eng.step() for _ in range(30)]
    assert records[0].budget == 16 and abs(records[-1].budget - 180) <= 4
    assert any("budget 16 -> 32 (adaptive)" in a for a in records[1].annotations)
    # Too slow a start comes down too.
    slow = AdaptiveBatchPlugin(target_ms=20, latency_fn=lambda rec: 0.002 + 0.0001 * rec.budget)
    eng = busy_engine([slow], budget=1000)
    assert abs([eng.step() for _ in range(30)][-1].budget - 180) <= 4


def test_adaptive_rejects_bad_options():
    with pytest.raises(ValueError, match="target_ms"):
        AdaptiveBatchPlugin(target_ms=0)
    with pytest.raises(ValueError, match="min_budget"):
        AdaptiveBatchPlugin(min_budget=10, max_budget=5)


@pytest.mark.parametrize("dtype, ratio", [("float32", 4), ("bfloat16", 2)])
def test_int8_kv_shrinks_bytes_and_values_are_int8_on_a_block_scale(dtype, ratio):
    plugin = KVInt8Plugin()
    config = EngineConfig(model="tiny", device="cpu", dtype=dtype, block_size=8, max_tokens_per_step=32)
    eng = Engine(config, plugins=[plugin])
    for i in range(3):
        eng.add_request([7 + i] * 20, max_new_tokens=12)
    for _ in range(4):
        rec = eng.step()
    assert plugin.bytes_int8 > 0
    assert ratio * 0.85 < plugin.bytes_full / plugin.bytes_int8 <= ratio
    assert any("kv int8" in a and "smaller" in a for a in rec.annotations)


def test_int8_kv_values_are_int8_levels_of_one_scale_per_block_and_head():
    # float32 holds q * scale exactly enough to read the levels back (bf16 would round them).
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", block_size=8, max_tokens_per_step=32)
    eng = Engine(config, plugins=[KVInt8Plugin()])
    for i in range(3):
        eng.add_request([7 + i] * 20, max_new_tokens=12)
    for _ in range(4):
        eng.step()
    bs = config.block_size
    for rid, table in eng.kv.allocator.tables.items():
        held = eng.kv.tokens[rid]
        for j, block in enumerate(table):
            n = min(bs, held - j * bs)
            x = eng.kv.k_pool[0].view(-1, bs, *eng.kv.k_pool.shape[2:])[block, :n].float()
            scale = x.abs().amax(dim=(0, 2), keepdim=True) / 127
            levels = x / scale
            assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_int8_kv_divergence_is_reported_and_small():
    workload = [([11 + i] * 30, 16) for i in range(4)]

    def outputs(plugins):
        eng = Engine(EngineConfig(model="tiny", device="cpu", block_size=8), plugins=plugins)
        for prompt, n in workload:
            eng.add_request(prompt, max_new_tokens=n)
        return eng.run_until_done()

    full, compressed = outputs([]), outputs([KVInt8Plugin()])
    differ = token_divergence(full, compressed)
    total = sum(len(v) for v in full.values())
    assert 0 <= differ < total / 2  # int8 is close, not exact
    assert token_divergence(full, full) == 0


def test_int8_needs_paged_layout_and_scenarios_load_plugins():
    with pytest.raises(ValueError, match="kv_layout"):
        Engine(EngineConfig(model="tiny", device="cpu", kv_layout="dense"), plugins=[KVInt8Plugin()])
    base = 'title = "t"\n[engine]\nmodel = "tiny"\ndevice = "cpu"\n[[requests]]\nprompt = "hi"\nmax_new_tokens = 2\n'
    scenario = loads(base + '[[plugins]]\nname = "priority"\noptions = { reserve_tokens = 4 }\n')
    eng = scenario.build_engine()
    assert [p.name for p in eng.plugins.plugins] == ["priority"] and eng.plugins.plugins[0].reserve_tokens == 4
    with pytest.raises(ScenarioError, match="unknown plugin 'nope'"):
        loads(base + '[[plugins]]\nname = "nope"\n')
    with pytest.raises(ScenarioError, match="kv_layout"):
        loads(base.replace('device = "cpu"', 'device = "cpu"\nkv_layout = "dense"') + '[[plugins]]\nname = "kv_int8"\n')
    with pytest.raises(ScenarioError, match="did you mean"):
        loads(base + '[[plugins]]\nnmae = "priority"\n')
