"""Decode-only steps through the padded static path of decode_graphs.py. On the CPU it runs
uncaptured (decode_graphs='on'), which checks everything but the capture: bucketing, padding,
the spare block, and that outputs stay exact."""

from __future__ import annotations

import random

import pytest
from helpers import CPP_DECODE, exact_config, run_alone

from engine import Engine, EngineConfig
from engine.runner.decode_graphs import DecodeGraphs


def graph_engine(**kw) -> Engine:
    base = dict(attention="sdpa", decode_graphs="on", block_size=8, max_tokens_per_step=48, prefill_chunk_size=16,
                decode_attention="gather")  # the padded gather: its fixed widths are what the graphs bucket
    base.update(kw)
    return Engine(exact_config(**base))


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_graphed_decodes_equal_each_request_alone(attention):
    rng = random.Random(5)
    reqs = [([rng.randrange(256) for _ in range(rng.randint(1, 70))], rng.randint(1, 16)) for _ in range(9)]
    eng = graph_engine(attention=attention, num_blocks=40)
    ids = [eng.add_request(p, max_new_tokens=n) for p, n in reqs]
    decode_only = preempted = 0
    while eng.has_unfinished():
        rec = eng.step()
        decode_only += rec.prefill_tokens == 0 and bool(rec.items)
        preempted += len(rec.preempted)
    assert eng.runner.decode_graphs.replays == decode_only > 5
    assert preempted > 0, "the pool was meant to be small enough to preempt"
    for rid, (p, n) in zip(ids, reqs, strict=True):
        assert eng.requests[rid].output == run_alone(p, n), f"request {rid} differs with decode graphs"


def test_padding_rows_write_only_the_spare_block():
    eng = graph_engine(num_blocks=24)
    for n in (5, 9, 13):  # three decodes: bucket 4, one padding row
        eng.add_request(list(range(1, n)), max_new_tokens=4)
    rec = eng.step()
    assert rec.prefill_tokens and not eng.runner.decode_graphs.replays and rec.decode_graph is None
    before = eng.runner.kv.k_pool.clone()
    rec = eng.step()
    assert rec.prefill_tokens == 0 and len(rec.items) == 3 and eng.runner.decode_graphs.replays == 1
    assert rec.decode_graph == [4, 256]  # the bucket: 4 rows, one 256-token width unit
    from cbtui.apps.dashboard import graph_note
    assert graph_note(rec) == ("decode graph: 3 of 4 rows, 256 keys each",)
    changed = (eng.runner.kv.k_pool != before).any(dim=-1).any(dim=-1).any(dim=0).nonzero().flatten().tolist()
    bs = eng.runner.kv.block_size
    written = {table[item.first_pos // bs] * bs + item.first_pos % bs
               for item in rec.items for table in [rec.kv.block_tables[str(item.request_id)]]}
    spare = set(range(eng.runner.kv.scratch_slot, eng.runner.kv.scratch_slot + bs))
    assert written <= set(changed) and set(changed) <= written | spare
    assert set(changed) & spare, "the padding row should have written the spare block"


def test_buckets():
    eng = graph_engine(num_blocks=24)
    graphs: DecodeGraphs = eng.runner.decode_graphs
    unit = graphs.width_unit  # 256 tokens of 8-token blocks
    assert graphs.bucket(1, 1) == (1, unit)
    assert graphs.bucket(3, unit + 1) == (4, 2 * unit)
    assert graphs.bucket(500, 1)[0] == 512 and graphs.bucket(513, 1) is None
    top = graphs.max_blocks
    assert graphs.bucket(1, top) == (1, top) and graphs.bucket(1, top + 1) is None
    assert graphs.capture_up_to(5, 3 * 256) == 4 * 3  # batches 1, 2, 4, 8 x widths of 1..3 units
    assert graphs.capture_up_to(5, 3 * 256) == 0  # already there


def test_steps_that_are_not_pure_decodes_run_eagerly():
    """A one-token prefill chunk that does not finish its prompt has no logits to sample: no graph."""
    eng = graph_engine(num_blocks=24, max_tokens_per_step=3, prefill_chunk_size=1)
    eng.add_request(list(range(1, 6)), max_new_tokens=3)
    eng.add_request(list(range(1, 4)), max_new_tokens=3)
    calls = []
    real = eng.runner.decode_graphs.run
    eng.runner.decode_graphs.run = lambda batch, samples: calls.append(all(samples)) or real(batch, samples)
    records = []
    while eng.has_unfinished():
        records.append(eng.step())
    # One token per item and every item samples (a prompt's last token counts as much as a decode).
    pure = [r for r in records if all(i.num_tokens == 1 for i in r.items) and len(r.sampled) == len(r.items)]
    assert eng.runner.decode_graphs.replays == len(pure) > 0
    assert any(r.prefill_tokens for r in pure), "a prompt's last token rode along with the decodes"
    assert False in calls  # single-token prefill steps that do not sample were offered and declined


def test_engine_uses_graphs_only_where_they_apply():
    assert Engine(EngineConfig(model="tiny", device="cpu")).runner.decode_graphs is None  # auto: CUDA only
    assert Engine(EngineConfig(model="tiny", device="cpu", decode_graphs="on")).runner.decode_graphs is not None
    from engine.plugins.loader import load_plugin
    with_plugin = Engine(EngineConfig(model="tiny", device="cpu", decode_graphs="on"),
                         plugins=[load_plugin("kv_int8")])
    assert with_plugin.runner.decode_graphs is None


@pytest.mark.parametrize("bad, words", [
    (dict(decode_graphs="yes"), "decode_graphs='yes' is not allowed"),
    (dict(decode_graphs="on", kv_layout="dense"), "needs kv_layout='paged'"),
    (dict(decode_graphs="on", attention="reference"), "needs kv_layout='paged'"),
])
def test_bad_decode_graph_settings(bad, words):
    with pytest.raises(ValueError, match=words):
        EngineConfig(model="tiny", device="cpu", **bad)


def test_spare_block_only_with_graphs_and_never_handed_out():
    eng = graph_engine(num_blocks=6)
    assert eng.runner.kv.k_pool.shape[1] == 7 * eng.runner.kv.block_size
    assert eng.runner.kv.scratch_slot // eng.runner.kv.block_size not in eng.scheduler.blocks.free_blocks
    plain = Engine(exact_config(attention="sdpa", block_size=8, num_blocks=6))  # auto on the CPU: no graphs
    assert plain.runner.kv.k_pool.shape[1] == 6 * 8 and plain.runner.kv.scratch_slot is None


def test_a_failed_capture_falls_back_to_eager_decodes_and_says_why(monkeypatch):
    eng = graph_engine(num_blocks=24)
    graphs = eng.runner.decode_graphs
    graphs.capture = True  # pretend we are on CUDA, with a capture that fails

    def no_capture(key):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphs, "_capture", no_capture)
    monkeypatch.setattr("torch.cuda.synchronize", lambda *a: None)
    eng.add_request(list(range(1, 9)), max_new_tokens=5)
    with pytest.warns(UserWarning, match="decode graph capture failed"):
        out = eng.run_until_done()
    assert graphs.broken.startswith("RuntimeError: operation not permitted") and graphs.replays == 0
    assert out[0] == run_alone(list(range(1, 9)), 5)


def test_header_names_the_decode_fast_path():
    label = Engine(EngineConfig(model="tiny", device="cpu")).header().label()
    assert label == "random tiny · fp32 · cpu · sdpa · paged" + CPP_DECODE
    assert graph_engine(num_blocks=24).header().label().endswith("· paged · decode graphs")
