"""Adaptive batch sizing converges; int8 KV shrinks the cache and stays close to the full run."""

import pytest
import torch

from engine import Engine, EngineConfig
from engine.kv.int8_pool import Int8BlockPool
from engine.plugins.builtin import AdaptiveBatchPlugin, KVInt8Plugin
from engine.plugins.builtin.kv_int8 import token_divergence
from scenarios import ScenarioError, load_scenario, loads


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
    assert any("budget 16 -> 32 (adaptive: budget used up" in a for a in records[1].annotations)
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
def test_int8_kv_really_shrinks_the_pool(dtype, ratio):
    def pool_bytes(plugins):
        eng = Engine(EngineConfig(model="tiny", device="cpu", dtype=dtype, block_size=8, num_blocks=64),
                     plugins=plugins)
        eng.add_request([7] * 20, max_new_tokens=4)
        rec = eng.step()
        kv = eng.runner.kv
        assert rec.memory.kv_pool_bytes == rec.kv.pool_bytes == kv.k_pool.nbytes + kv.v_pool.nbytes
        return rec.memory.kv_pool_bytes, rec

    full, _ = pool_bytes([])
    plugin = KVInt8Plugin()
    small, rec = pool_bytes([plugin])
    assert ratio * 0.9 < full / small <= ratio  # a float32 scale per block and head costs a little
    assert (plugin.bytes_full, plugin.bytes_int8) == (full, small)
    assert any("kv int8" in a and "smaller" in a for a in rec.annotations)


def test_int8_pool_round_trip_and_stale_entries():
    pool = Int8BlockPool(num_layers=1, num_blocks=4, block_size=4, num_kv_heads=2, head_dim=3,
                         dtype=torch.float32, device=torch.device("cpu"))
    layer = pool[0]
    gen = torch.Generator().manual_seed(0)
    first = torch.randn(6, 2, 3, generator=gen)
    layer.index_copy_(0, torch.arange(0, 6), first[:6])  # blocks 0 and 1 (offsets 0..3, 0..1)
    more = torch.randn(1, 2, 3, generator=gen)
    layer.index_copy_(0, torch.tensor([6]), more)  # an append into block 1: re-quantised
    back = layer[torch.arange(0, 7)]
    truth = torch.cat([first, more])
    step = pool.scale[0][torch.arange(7) // 4][:, :, None]  # one level of each entry's block
    assert (back - truth).abs().le(step / 2 + 1e-6).all()
    assert pool.q.dtype == torch.int8 and pool.q.abs().max() <= 127
    # Block 1 is freed; a new owner writes small values from offset 0: the stale big entries at
    # offsets 1..2 must not set its scale.
    layer.index_copy_(0, torch.tensor([4]), torch.full((1, 2, 3), 0.01))
    assert torch.allclose(pool.scale[0][1], torch.full((2,), 0.01 / 127))
    assert torch.allclose(layer[torch.tensor([4])], torch.full((1, 2, 3), 0.01))


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


@pytest.mark.slow
def test_headless_run_with_kv_int8_reports_divergence_and_bytes():
    import re
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "mixed_load", "--headless", "--plugin",
                          "kv_int8"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    match = re.search(r"kv_int8: (\d+) of (\d+) generated tokens differ from the uncompressed run; "
                      r"KV pool (\d+) -> (\d+) bytes", res.stdout)
    assert match, res.stdout[-500:]
    differ, total, full, small = map(int, match.groups())
    expected_total = sum(r["max_new_tokens"] for r in load_scenario("mixed_load").requests)
    assert total == expected_total and 0 <= differ < total // 4 and 3.5 < full / small <= 4
