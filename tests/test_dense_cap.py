"""#30: the dense layout has a memory cap. Each request's tensors grow on demand and nothing preempts
a dense request, so admission reserves its whole length (prompt plus max_new_tokens) against
cache.dense_max_tokens (default: what the paged pool would hold); a request that does not fit waits,
with its reason ("no free KV memory"), and the outputs stay exact."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from helpers import exact_config, run_alone, run_batched

from engine import Engine, EngineConfig
from engine.records import REASON_NO_KV_MEMORY
from engine.records.events import step_events
from engine.runner.model_runner import default_num_blocks


def workload(n: int, prompt: int, new: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": [rng.randrange(256) for _ in range(prompt)], "max_new_tokens": new} for _ in range(n)]


def test_held_tokens_never_pass_the_cap_and_waiting_requests_say_why():
    """The issue's shape, scaled to the CPU: many long requests, a budget that would admit them all
    in a step, dense. Without the cap every prompt is held at once."""
    cap = 600
    config = EngineConfig(model="tiny", device="cpu", kv_layout="dense", dense_max_tokens=cap,
                          max_tokens_per_step=20_000, prefill_chunk_size=4096)
    engine = Engine(config)
    for spec in workload(40, 100, 8):
        engine.add_request(**spec)
    held_most, waited, previous = 0, False, None
    while engine.has_unfinished():
        record = engine.step()
        held = sum(map(engine.runner.kv.held, engine.runner.kv.store))
        held_most = max(held_most, held)
        assert held <= cap, f"step {record.step}: {held} KV tokens held, cap {cap}"
        reasons = {v.reason for v in record.requests if v.state == "waiting"}
        if REASON_NO_KV_MEMORY in reasons:
            waited = True
            assert any("no free KV memory" in e.text for e in step_events(record, previous))
        previous = record
    assert waited and held_most > cap // 2
    assert engine.scheduler.dense_held == 0 and not engine.scheduler.dense_reserved


def test_the_default_cap_is_what_the_paged_pool_would_hold():
    engine = Engine(EngineConfig(model="tiny", device="cpu", kv_layout="dense"))
    bytes_per_token = engine.runner.kv.bytes_per_token
    expected = default_num_blocks(engine.config, engine.runner.device, bytes_per_token) * engine.config.cache.block_size
    assert engine.runner.dense_tokens == engine.scheduler.dense_tokens == expected
    assert Engine(EngineConfig(model="tiny", device="cpu")).scheduler.dense_tokens is None  # paged: blocks


@pytest.mark.parametrize("cap", [60, 97, 200])
def test_greedy_outputs_under_a_tight_cap_equal_each_request_alone(cap):
    specs = workload(8, 20, 12, seed=cap) + workload(3, 40, 5, seed=cap + 1)
    config = exact_config(kv_layout="dense", dense_max_tokens=cap, max_tokens_per_step=64, prefill_chunk_size=16)
    outputs, records, _ = run_batched(config, specs)
    assert any(v.reason == REASON_NO_KV_MEMORY for r in records for v in r.requests)
    for spec, out in zip(specs, outputs, strict=True):
        assert out == run_alone(spec["prompt"], spec["max_new_tokens"])


def test_a_request_longer_than_the_cap_is_refused_in_one_line():
    engine = Engine(EngineConfig(model="tiny", device="cpu", kv_layout="dense", dense_max_tokens=50))
    with pytest.raises(ValueError) as caught:
        engine.add_request(list(range(40)), max_new_tokens=11)
    message = str(caught.value)
    assert "dense_max_tokens=50 is too small" in message and "at least 51" in message and "\n" not in message
    assert engine.add_request(list(range(40)), max_new_tokens=10) == 0


@pytest.mark.parametrize("settings, says", [
    (dict(kv_layout="dense", dense_max_tokens=0), "dense_max_tokens=0 is out of range"),
    (dict(kv_layout="dense", dense_max_tokens=10**15), "dense_max_tokens"),
    (dict(kv_layout="dense", dense_max_tokens="many"), "dense_max_tokens='many' must be an integer"),
])
def test_bad_caps_are_one_line(settings, says):
    with pytest.raises(ValueError, match=says) as caught:
        Engine(EngineConfig(model="tiny", device="cpu", **settings))
    assert "\n" not in str(caught.value)


SCENARIO = """\
title = "Dense, capped"
[engine]
model = "tiny"
kv_layout = "dense"
dense_max_tokens = DENSE_CAP
[[requests]]
prompt_len = 12
max_new_tokens = 4
"""


@pytest.mark.slow
@pytest.mark.parametrize("cap, says", [("8", "dense_max_tokens=8 is too small: one request of 16 tokens"),
                                       ("0", "dense_max_tokens"), ("1e3", "dense_max_tokens"),
                                       ("9" * 5000, "cbtui: error: ")], ids=["small", "zero", "float", "huge"])
def test_cli_a_bad_dense_cap_in_a_scenario_is_one_line_exit_2(tmp_path, cap, says):
    path = tmp_path / "capped.toml"
    path.write_text(SCENARIO.replace("DENSE_CAP", cap))
    done = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(path), "--headless", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr[-300:]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_cli_a_dense_cap_in_a_scenario_runs_with_waits_said(tmp_path):
    path = tmp_path / "capped.toml"
    path.write_text(SCENARIO.replace("DENSE_CAP", "20") + SCENARIO[SCENARIO.index("[[requests]]"):] * 2)
    done = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(path), "--events", "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert "no free KV memory" in done.stdout
