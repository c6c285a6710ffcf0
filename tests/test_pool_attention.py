"""Decodes read the paged pool directly (attention/paged_decode.py), one gather of whole blocks;
every other item still reads packed keys. Checked against the reference backend and the packed
path, and for when the engine picks which."""

from __future__ import annotations

import random

import pytest
import torch

from engine import Engine, EngineConfig
from engine.attention.layer_attention import PackedAttention, PoolAttention
from engine.attention.paged_decode import paged_decode_attention
from engine.attention.reference import reference_attention
from engine.batch_builder import build_batch
from engine.plugins.base import AttentionPlugin
from engine.records import ScheduledItem

CPU = torch.device("cpu")


@pytest.mark.parametrize("seed", range(5))
def test_paged_decode_matches_reference(seed):
    """Shuffled block tables, garbage in unused slots and past each table's end: only an item's own
    keys, in order, may count."""
    rng = random.Random(seed)
    bs, kvh, heads, d, num_blocks = rng.choice([4, 8, 16]), 2, 6, 8, 64
    n = rng.randint(1, 9)
    lens = [rng.randint(1, 5 * bs) for _ in range(n)]
    free = list(range(num_blocks))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-length // bs))] for length in lens]
    width = max(map(len, tables))
    padded = torch.tensor([t + [rng.randrange(num_blocks) for _ in range(width - len(t))] for t in tables])
    k_pool = torch.randn(num_blocks * bs, kvh, d, dtype=torch.float64)
    v_pool = torch.randn(num_blocks * bs, kvh, d, dtype=torch.float64)
    q = torch.randn(n, heads, d, dtype=torch.float64)
    got = paged_decode_attention(q, k_pool, v_pool, padded, torch.tensor(lens), bs)

    items = [ScheduledItem(i, "decode", length - 1, 1, length) for i, length in enumerate(lens)]
    batch = build_batch(items, [[0]] * n, [True] * n, CPU)
    slots = torch.tensor([t[p // bs] * bs + p % bs
                          for t, length in zip(tables, lens, strict=True) for p in range(length)])
    want = reference_attention(q, k_pool[slots], v_pool[slots], batch)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


class Passthrough(AttentionPlugin):
    name = "passthrough"

    def wrap(self, layer_idx, attention):
        return attention if layer_idx else (lambda q, k, v, batch: attention(q, k, v, batch))


@pytest.mark.parametrize("attention, layout, plugins, want", [
    ("sdpa", "paged", [], [PoolAttention, PoolAttention]),
    ("flex", "paged", [], [PoolAttention, PoolAttention]),
    ("reference", "paged", [], [PackedAttention, PackedAttention]),  # teaches the full mask
    ("sdpa", "dense", [], [PackedAttention, PackedAttention]),
    ("sdpa", "paged", ["kv_int8"], [PackedAttention, PackedAttention]),  # its pool dequantises on read
    ("sdpa", "paged", [Passthrough()], [PackedAttention, PoolAttention]),  # only the wrapped layer
])
def test_engine_reads_the_pool_only_when_nothing_stands_in_between(attention, layout, plugins, want):
    from engine.plugins.loader import load_plugin

    plugins = [load_plugin(p) if isinstance(p, str) else p for p in plugins]
    eng = Engine(EngineConfig(model="tiny", device="cpu", attention=attention, kv_layout=layout), plugins=plugins)
    assert [type(a) for a in eng.runner.layer_attention] == want


def test_decode_steps_never_read_packed_keys(monkeypatch):
    eng = Engine(EngineConfig(model="tiny", device="cpu", attention="sdpa", max_tokens_per_step=20,
                              prefill_chunk_size=8))
    reads = []
    real = eng.runner.kv.read
    monkeypatch.setattr(eng.runner.kv, "read",
                        lambda layer, first_item=0: reads.append(first_item) or real(layer, first_item))
    eng.add_request(list(range(1, 12)), max_new_tokens=6)
    eng.add_request(list(range(1, 40)), max_new_tokens=3)
    while eng.has_unfinished():
        reads.clear()
        rec = eng.step()
        decodes = sum(1 for i in rec.items if i.num_tokens == 1 and i.kind == "decode")
        if rec.prefill_tokens == 0:
            assert reads == [], f"step {rec.step}: a decode-only step read packed keys"
        else:  # only the prefill items' keys, from just after the decodes, once per layer
            assert reads == [decodes] * eng.runner.spec.num_layers


@pytest.mark.parametrize("block_size", [6, 16])  # 6: the slot mapping without shifts
def test_pool_and_packed_paths_give_the_same_tokens_under_preemption(block_size):
    rng = random.Random(block_size)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 60))], rng.randint(2, 12)) for _ in range(8)]
    outs = []
    for direct in (True, False):
        eng = Engine(EngineConfig(model="tiny", device="cpu", dtype="float64", attention="sdpa",
                                  block_size=block_size, num_blocks=-(-80 // block_size) * 2,
                                  max_tokens_per_step=32, prefill_chunk_size=16))
        if not direct:
            eng.runner.layer_attention = [PackedAttention(eng.runner.attention)] * eng.runner.spec.num_layers
        ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
        out = eng.run_until_done()
        assert sum(eng.requests[i].num_preemptions for i in ids) > 0, "the pool should have run dry"
        outs.append([out[i] for i in ids])
    assert outs[0] == outs[1]
