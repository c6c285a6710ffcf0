"""kv_memory_bytes sizes the paged pool from memory, so int8 KV (kv_int8) buys blocks and fewer preemptions."""

import re
import subprocess
import sys

import pytest

from engine import Engine, EngineConfig
from engine.kv.int8_pool import Int8BlockPool
from engine.plugins.builtin import KVInt8Plugin
from engine.plugins.builtin.kv_int8 import token_divergence
from scenarios import load_scenario

BUDGET = 81920  # 20 float32 blocks of 8 tokens for the tiny model (512 bytes of K/V per token)


def budget_engine(plugins, budget=BUDGET, **settings):
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", block_size=8, kv_memory_bytes=budget,
                          max_tokens_per_step=64, prefill_chunk_size=32, **settings)
    return Engine(config, plugins=plugins)


def test_a_memory_budget_gives_the_blocks_that_fit_and_int8_fits_more():
    plain = budget_engine([])
    assert plain.scheduler.blocks.num_blocks == 20 and plain.runner.kv.pool_bytes == BUDGET
    plugin = KVInt8Plugin()
    small = budget_engine([plugin])
    kv = small.runner.kv
    per_block = 2 * Int8BlockPool.bytes_per_block(2, 8, 2, 16)
    assert small.scheduler.blocks.num_blocks == BUDGET // per_block == 77 and kv.num_blocks == 77
    assert len(small.scheduler.blocks.free_blocks) == 77
    assert kv.pool_bytes <= BUDGET < kv.pool_bytes + per_block  # the same memory, used up
    assert small.header().num_blocks == 77 and (plugin.blocks_full, plugin.blocks_int8) == (20, 77)
    small.add_request([5] * 30, max_new_tokens=4)
    record = small.step()
    assert record.kv.num_blocks == 77 and any("20 -> 77 blocks" in a for a in record.annotations)


def test_int8_with_the_same_memory_preempts_less_and_stays_close():
    def run(plugins):
        engine = budget_engine(plugins)
        for i in range(8):
            engine.add_request([(7 * i + j) % 250 + 1 for j in range(24 + 2 * i)], max_new_tokens=20 + i)
        preempted = 0
        while engine.has_unfinished():
            preempted += len(engine.step().preempted)
        return preempted, engine.outputs()

    full_preempted, full = run([])
    int8_preempted, compressed = run([KVInt8Plugin()])
    assert full_preempted > 0 and int8_preempted < full_preempted
    total = sum(map(len, full.values()))
    assert 0 <= token_divergence(full, compressed) < total / 4


@pytest.mark.parametrize("settings, message", [
    (dict(kv_memory_bytes=4096, num_blocks=8), "give one of them"),
    (dict(kv_memory_bytes=4096, kv_layout="dense"), "kv_layout='paged'"),
    (dict(kv_memory_bytes=0), "kv_memory_bytes=0"),
])
def test_bad_budgets_are_refused(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        EngineConfig(**settings)


def test_a_budget_below_one_block_or_one_request_says_raise_it():
    with pytest.raises(ValueError, match="holds no KV block.*raise kv_memory_bytes"):
        budget_engine([], budget=1000)
    engine = budget_engine([], budget=4096)  # one block of 8 tokens
    with pytest.raises(ValueError, match="kv_memory_bytes=4096 holds 1 blocks.*raise kv_memory_bytes"):
        engine.add_request([1] * 20, max_new_tokens=4)


@pytest.mark.slow
def test_kv_pressure_with_kv_int8_preempts_less_with_divergence_reported():
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", "kv_pressure", "--headless", "--plugin",
                          "kv_int8"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    match = re.search(r"kv_int8: (\d+) of (\d+) generated tokens differ from the uncompressed run; same KV memory "
                      r"\(kv_memory_bytes=81920\): (\d+) -> (\d+) blocks, (\d+) -> (\d+) preemptions", res.stdout)
    assert match, res.stdout[-800:]
    differ, total, blocks_full, blocks_int8, preempt_full, preempt_int8 = map(int, match.groups())
    assert (blocks_full, blocks_int8) == (20, 77)
    assert preempt_full == 5 and preempt_int8 < preempt_full
    assert 0 < differ < total // 4
    text = " ".join(load_scenario("kv_pressure").description.split())
    assert f"fits {blocks_int8} blocks" in text and f"lossy: {differ} of {total}" in text
