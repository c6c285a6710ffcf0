"""Valid settings never deadlock: a reserved budget slice its holders cannot use is lifted."""

import subprocess
import sys

import pytest
from helpers import exact_config, run_alone

from engine import Engine, EngineConfig
from engine.plugins.builtin import PriorityPlugin

STATIC_URGENT = """title = "static batch and an urgent request"
description = "d"
question = "q?"
[engine]
model = "tiny"
device = "cpu"
max_tokens_per_step = 16
policy = "static"
static_batch_size = 2
[[requests]]
prompt = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
max_new_tokens = 6
[[requests]]
prompt = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
max_new_tokens = 6
[[requests]]
prompt = "urgent"
max_new_tokens = 4
priority = 5
arrival_step = 1
[[plugins]]
name = "priority"
options = { reserve_tokens = 16 }
"""


@pytest.mark.slow
def test_static_batch_with_an_urgent_request_outside_it_finishes(tmp_path):
    """The urgent request waits outside the static batch; the whole budget was reserved for it, so
    the batch got nothing: 'no progress' for ever, printed in an endless loop by --headless."""
    path = tmp_path / "lesson.toml"
    path.write_text(STATIC_URGENT)
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(path), "--headless"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "no progress" not in res.stdout and "summary: " in res.stdout


def test_a_holder_waiting_for_blocks_the_starved_requests_hold_does_not_stall():
    """The urgent request needs KV blocks that a low-priority one holds, and the low-priority one
    gets no budget while the urgent one waits: the slice is lifted for such a step. Outputs stay exact."""
    config = exact_config(kv_layout="paged", block_size=4, num_blocks=6, max_tokens_per_step=8,
                          prefill_chunk_size=8, attention="sdpa")
    eng = Engine(config, plugins=[PriorityPlugin(reserve_tokens=8)])
    low = eng.add_request(list(range(1, 17)), max_new_tokens=6)
    high = eng.add_request(list(range(20, 28)), max_new_tokens=4, priority=5, arrival_step=3)
    outputs = eng.run_until_done()
    assert outputs[low] == run_alone(list(range(1, 17)), 6)
    assert outputs[high] == run_alone(list(range(20, 28)), 4)


def test_reserving_the_whole_budget_still_serves_everyone():
    eng = Engine(EngineConfig(model="tiny", device="cpu", max_tokens_per_step=8),
                 plugins=[PriorityPlugin(reserve_tokens=8)])
    ids = [eng.add_request([i + 1] * 12, max_new_tokens=3, priority=5 * (i % 2)) for i in range(4)]
    outputs = eng.run_until_done(max_steps=200)
    assert [len(outputs[i]) for i in ids] == [3, 3, 3, 3]
