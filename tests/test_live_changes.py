"""Changing a run while it runs (engine/live_changes.py, Engine.abort and Engine.reconfigure): a
request stopped before a step frees its KV then and the record says so; a live setting changes
from its step on and the record tells it; a setting that cannot change, a bad value or a step in
the past is refused in one line and nothing changes. Outputs stay exact (test_exactness.py
changes settings mid-run in its property test)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from click.testing import CliRunner
from helpers import exact_config, run_alone

from cbtui.cli import main
from engine import Engine
from engine.live_changes import live_names, why_fixed
from engine.records.events import step_events
from scenarios import load_scenario, loads
from scenarios.compare import run_records
from scenarios.errors import ScenarioError
from scenarios.variant_pair import fork_pair

WORKLOAD = [{"prompt": list(range(5 + 3 * i, 17 + 3 * i)), "max_new_tokens": 6 + i} for i in range(4)]


def engine(**config) -> tuple[Engine, list[int]]:
    eng = Engine(exact_config(block_size=4, num_blocks=64, **config))
    return eng, [eng.add_request(**spec) for spec in WORKLOAD]


def test_an_aborted_request_frees_its_blocks_at_the_next_step_and_keeps_its_tokens():
    eng, ids = engine(max_tokens_per_step=64, prefill_chunk_size=64)
    for _ in range(3):
        eng.step()
    victim = ids[1]
    held = eng.scheduler.blocks.tables[victim]
    so_far = list(eng.requests[victim].output)
    eng.abort(victim)
    record = eng.step()
    assert record.aborted == [victim] and victim not in record.finished
    assert record.kv.freed_blocks[str(victim)] == held and str(victim) not in record.kv.block_tables
    assert victim not in {item.request_id for item in record.items}
    view = next(v for v in record.requests if v.id == victim)
    assert view.state == "aborted" and view.reason is None and view.generated == len(so_far)
    told = [e.text for e in step_events(record) if e.kind == "aborted"]
    assert told == [f"request {victim} aborted after {len(so_far)} tokens, {len(held)} blocks freed"]
    outputs = eng.run_until_done()
    assert outputs[victim] == so_far  # what it had, no more
    for rid, spec in zip(ids, WORKLOAD, strict=True):
        if rid != victim:  # the others are untouched: exact
            assert outputs[rid] == run_alone(spec["prompt"], spec["max_new_tokens"])
    assert not eng.scheduler.blocks.tables and eng.scheduler.blocks.num_free == 64


def test_waiting_and_pending_requests_can_be_aborted_too():
    eng, ids = engine(max_tokens_per_step=8, prefill_chunk_size=8)
    late = eng.add_request([1, 2, 3], max_new_tokens=2, arrival_step=5)
    eng.step()  # the budget admits one: the others wait
    waiting = next(r.id for r in eng.scheduler.waiting)
    eng.abort(waiting)
    eng.abort(late)
    record = eng.step()
    assert sorted(record.aborted) == sorted([waiting, late]) and not eng.pending
    assert all(r.id not in (waiting, late) for r in eng.scheduler.waiting)
    eng.run_until_done()
    assert eng.requests[late].output == [] and eng.requests[waiting].output == []


def test_abort_refuses_what_is_not_alive_in_one_line():
    eng, ids = engine()
    eng.run_until_done()
    for bad in (ids[0], 999, "x"):
        with pytest.raises(ValueError, match="cannot be aborted: it is not pending, waiting or running"):
            eng.abort(bad)


def test_a_live_setting_changes_from_its_step_and_the_record_tells_it():
    eng, _ = engine(max_tokens_per_step=8, prefill_chunk_size=4)
    eng.reconfigure(at_step=2, max_tokens_per_step=32, prefill_chunk_size=16)
    records = [eng.step() for _ in range(3)]
    assert [r.budget for r in records] == [8, 8, 32]
    assert records[2].changes == ["max_tokens_per_step 8 -> 32", "prefill_chunk_size 4 -> 16"]
    assert not records[0].changes and not records[1].changes
    assert [e.text for e in step_events(records[2]) if e.kind == "changed"] == [
        "max_tokens_per_step 8 -> 32 from step 2", "prefill_chunk_size 4 -> 16 from step 2"]
    assert max(item.num_tokens for item in records[2].items) <= 16
    assert eng.config.scheduler.max_tokens_per_step == 32


def test_bad_changes_are_refused_in_one_line_and_nothing_changes():
    eng, _ = engine()
    eng.step()
    cases = [({"num_blocks": 8}, r"num_blocks cannot change while the run goes on \(the KV pool is laid out"),
             ({"model": "small"}, r"model cannot change while the run goes on \(the model is loaded"),
             ({"max_tokens_per_step": 0}, r"max_tokens_per_step=0 is out of range"),
             ({"policy": "lottery"}, r"policy='lottery' is not allowed"),
             ({"max_tokn_per_step": 3}, r"did you mean max_tokens_per_step"),
             ({"num_speculative_tokens": 2}, r"changes nothing without speculative decoding")]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            eng.reconfigure(**changes)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"step 0 is in the past: the next step is 1"):
        eng.reconfigure(at_step=0, max_tokens_per_step=8)
    assert eng.changes.pending == {} and eng.step().changes == []


def test_which_settings_are_live_is_said_once_in_the_metadata():
    assert set(live_names()) == {"max_tokens_per_step", "prefill_chunk_size", "max_decode_per_step", "policy",
                                 "static_batch_size", "num_speculative_tokens"}
    assert why_fixed("max_tokens_per_step") is None
    assert why_fixed("attention") == "kernels, graphs and pipelining are set up when the engine is built"


def test_the_policy_can_turn_static_mid_run_and_the_speculative_k_can_shrink():
    eng, ids = engine(max_tokens_per_step=64, prefill_chunk_size=64, speculative="ngram", num_speculative_tokens=4)
    eng.reconfigure(at_step=2, num_speculative_tokens=1, policy="static", static_batch_size=2)
    outputs = eng.run_until_done()
    assert eng.speculator.k == 1 and eng.scheduler.admission.size == 2
    for rid, spec in zip(ids, WORKLOAD, strict=True):
        assert outputs[rid] == run_alone(spec["prompt"], spec["max_new_tokens"])


def test_a_scenario_file_turns_a_setting_at_a_step_and_refuses_a_fixed_one(tmp_path):
    text = ('title = "t"\n[engine]\nmax_tokens_per_step = 8\n[[requests]]\nprompt = "hello there"\n'
            'max_new_tokens = 6\n[[changes]]\nstep = 2\nmax_tokens_per_step = 4\n')
    scenario = loads(text, tmp_path / "t.toml")
    assert scenario.changes == [(2, {"max_tokens_per_step": 4})]
    records = run_records(scenario)
    assert [r.budget for r in records[:3]] == [8, 8, 4] and records[2].changes == ["max_tokens_per_step 8 -> 4"]
    for bad, message in (("num_blocks = 8", "num_blocks cannot change while the run goes on"),
                         ("max_tokens_per_step = -1", "max_tokens_per_step=-1 is out of range"),
                         ("", "changes nothing")):
        broken = text.replace("max_tokens_per_step = 4", bad)
        with pytest.raises(ScenarioError, match=r"\[\[changes\]\] #1 .*" + message):
            loads(broken, tmp_path / "t.toml")


def test_at_on_the_command_line_tells_the_change_and_refuses_bad_ones_with_exit_2():
    runner = CliRunner()
    result = runner.invoke(main, ["scenario", "mixed_load", "--events", "--steps", "7", "--at",
                                  "5:max_tokens_per_step=16"])
    assert result.exit_code == 0, result.output
    assert "max_tokens_per_step 48 -> 16 from step 5" in result.output
    for at, message in (("5:num_blocks=3", "num_blocks cannot change while the run goes on"),
                        ("5:max_tokens_per_step=0", "max_tokens_per_step=0 is out of range"),
                        ("x", "give STEP:KEY=VALUE"), ("5:max_tokens_per_step=lots", "takes an integer")):
        result = runner.invoke(main, ["scenario", "mixed_load", "--headless", "--at", at])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_a_fork_shares_every_step_before_its_change_and_differs_after():
    scenario = load_scenario("mixed_load")
    forked = replace(scenario, changes=[(10, {"max_tokens_per_step": 8})])
    base_run, fork_run = fork_pair(scenario, forked, ("10:max_tokens_per_step=8",))
    base, fork = run_records(base_run.scenario), run_records(fork_run.scenario)

    def same(record):  # everything a record says but its timings
        d = record.to_dict()
        for key in ("wall_time_s", "record_time_s", "device_time_s", "memory", "changes"):
            d.pop(key)
        return d

    assert [same(r) for r in base[:10]] == [same(r) for r in fork[:10]]
    assert fork[10].budget == 8 and base[10].budget == 48 and fork[10].changes == ["max_tokens_per_step 48 -> 8"]
    assert len(fork) > len(base)
    assert fork_run.name == "fork 10:max_tokens_per_step=8"
    # No change at all: the fork is the run itself, record for record
    again = run_records(replace(scenario, changes=[(10, {"max_tokens_per_step": 48})]))
    assert [same(r) for r in again] == [same(r) for r in base] and not again[10].changes
