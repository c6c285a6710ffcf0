"""Overlapped steps (engine/overlapped_steps.py, engine/runner/overlap.py): the same tokens and the
same records as synchronous steps, one call later, whatever the schedule (chunked prefill, decode
caps, preemption, arrivals, static batches, decode graphs). On the CPU the device is synchronous,
so what is checked here is the bookkeeping: placeholders, decodes fed from the previous step's
sampled tensor, resolution."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import exact_config, run_alone
from hypothesis import given, settings
from test_exactness import scenario_st

from engine import Engine, EngineConfig
from engine.runner.overlap import PENDING_TOKEN, feed_pending_tokens


def run_all(config: EngineConfig, workload: list[dict]):
    eng = Engine(config)
    ids = [eng.add_request(**spec) for spec in workload]
    records, calls = [], 0
    while eng.has_unfinished():
        record = eng.step()
        calls += 1
        if record is not None:
            records.append(record)
        assert calls < 10_000, "engine did not finish"
    return [eng.requests[i].output for i in ids], records, eng


def comparable(record) -> tuple:
    """Everything a record says, but timings and memory readings."""
    kv = record.kv
    return (record.step, [(i.request_id, i.kind, i.first_pos, i.num_tokens, i.key_len) for i in record.items],
            dict(record.sampled), record.finished, record.preempted, record.decode_tokens, record.prefill_tokens,
            record.running, record.waiting, record.finished_total, kv.blocks_used, dict(kv.block_tables),
            dict(kv.tokens), dict(kv.freed_blocks),
            [(v.id, v.state, v.prefill_pos, v.generated, v.reason, v.ttft_steps, v.num_preemptions,
              tuple(v.output_tail)) for v in record.requests])


@pytest.mark.slow
@settings(max_examples=40)
@given(scenario_st())
def test_overlapped_steps_give_the_synchronous_tokens_and_records(case):
    config, workload = case
    if config.cache.kv_layout != "paged":
        config = replace(config, kv_layout="paged")
    sync_out, sync_records, _ = run_all(config, workload)
    over_out, over_records, eng = run_all(replace(config, overlap_steps=True), workload)
    assert over_out == sync_out
    assert PENDING_TOKEN not in [t for out in over_out for t in out]
    assert [comparable(r) for r in over_records] == [comparable(r) for r in sync_records]
    for r in eng.requests.values():
        assert r.first_token_time is not None and r.finish_time is not None and r.finish_time >= r.first_token_time


def test_overlap_with_preemption_and_decode_graphs_stays_exact():
    workload = [{"prompt": list(range(10 + i, 40 + i)), "max_new_tokens": 14, "arrival_step": i % 3}
                for i in range(6)]
    config = exact_config(kv_layout="paged", block_size=4, num_blocks=14, max_tokens_per_step=32,
                          prefill_chunk_size=8, attention="sdpa", decode_graphs="on", overlap_steps=True)
    outputs, records, eng = run_all(config, workload)
    assert sum(len(r.preempted) for r in records) > 0
    assert eng.runner.decode_graphs.replays > 0
    for spec, out in zip(workload, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])


def test_records_come_one_call_late_and_complete():
    eng = Engine(exact_config(max_tokens_per_step=64, prefill_chunk_size=64, overlap_steps=True))
    rid = eng.add_request(list(range(20)), max_new_tokens=3)
    assert eng.step() is None  # step 0 launched, nothing read back yet
    assert eng.has_unfinished()
    first = eng.step()  # launches step 1, returns step 0 with its token
    assert first.step == 0 and first.sampled[str(rid)] == eng.requests[rid].output[0] != PENDING_TOKEN
    assert eng.requests[rid].output[1] == PENDING_TOKEN  # step 1's token is still on its way
    second, third = eng.step(), eng.step()
    assert (second.step, third.step) == (1, 2) and third.finished == [rid]
    assert not eng.has_unfinished() and PENDING_TOKEN not in eng.requests[rid].output


def test_stopping_at_max_steps_reads_the_step_in_flight():
    eng = Engine(exact_config(max_tokens_per_step=64, prefill_chunk_size=64, overlap_steps=True))
    rid = eng.add_request(list(range(20)), max_new_tokens=10)
    outputs = eng.run_until_done(max_steps=4)
    assert len(outputs[rid]) == 4 and PENDING_TOKEN not in outputs[rid]
    assert outputs[rid] == run_alone(list(range(20)), 10)[:4]


def test_what_overlap_cannot_do_is_refused_in_one_line():
    with pytest.raises(ValueError, match="eos_token_id=None"):
        EngineConfig(overlap_steps=True, eos_token_id=3)
    eng = Engine(EngineConfig(overlap_steps=True))
    with pytest.raises(ValueError, match="temperature 0 or overlap_steps=False"):
        eng.add_request([1, 2], max_new_tokens=2, temperature=0.7)
    from engine.plugins.builtin import PriorityPlugin

    with pytest.raises(ValueError, match="cannot run plugins"):
        Engine(EngineConfig(overlap_steps=True), plugins=[PriorityPlugin()])


def test_a_placeholder_outside_a_decode_is_a_bug_said_plainly():
    with pytest.raises(RuntimeError, match="outside a decode"):
        feed_pending_tokens(torch.zeros(3, dtype=torch.long), [[5, PENDING_TOKEN, 6]], [7], None)


def test_scenarios_refuse_overlapped_steps(tmp_path):
    from scenarios import ScenarioError, load_scenario

    path = tmp_path / "s.toml"
    path.write_text('title = "t"\n[engine]\noverlap_steps = true\n[[requests]]\nprompt = "hi"\n')
    with pytest.raises(ScenarioError, match="overlap_steps"):
        load_scenario(str(path))
