"""Limits that keep a file someone sent you from exhausting the machine: checked before any work."""

import subprocess
import sys
import time

import pytest

from engine import Engine, EngineConfig
from engine.runner.model_runner import free_memory_bytes
from scenarios import ScenarioError
from scenarios.loader import loads
from scenarios.workload import MAX_REQUESTS

HEAD = 'title = "t"\ndescription = "d"\nquestion = "q?"\n[engine]\nmodel = "tiny"\ndevice = "cpu"\n'


def test_too_many_explicit_requests_is_one_error_at_once():
    text = HEAD + '[[requests]]\nprompt = "ab"\nmax_new_tokens = 1\n' * (MAX_REQUESTS + 1)
    start = time.perf_counter()
    with pytest.raises(ScenarioError, match=f"has {MAX_REQUESTS + 1} entries, more than {MAX_REQUESTS}"):
        loads(text)
    assert time.perf_counter() - start < 10  # refused before parsing each entry


def test_requests_and_generators_count_together():
    text = (HEAD + '[[requests]]\nprompt = "ab"\nmax_new_tokens = 1\n'
            + f'[[generators]]\ncount = {MAX_REQUESTS}\nprompt_len = 4\nmax_new_tokens = 1\n')
    with pytest.raises(ScenarioError, match=r"\[\[requests\]\] and \[\[generators\]\] together"):
        loads(text)


def test_queuing_many_requests_is_not_quadratic():
    eng = Engine(EngineConfig(model="tiny", device="cpu"))
    start = time.perf_counter()
    for i in range(20_000):
        eng.add_request([1, 2, 3], max_new_tokens=1, arrival_step=20_000 - i)  # each arrives before the last
    assert time.perf_counter() - start < 10  # 21 s when each add re-sorted the queue


@pytest.mark.slow
def test_a_pool_larger_than_memory_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"num_blocks=1000000000: the KV pool would take .*; use num_blocks <= "):
        Engine(EngineConfig(model="tiny", device="cpu", num_blocks=10**9))
    cpu = __import__("torch").device("cpu")
    blocks = free_memory_bytes(cpu) // (16 * 24576) + 1  # small in float32: 24 KiB a token
    with pytest.raises(ValueError, match="the KV pool would take"):
        Engine(EngineConfig(model="small", device="cpu", num_blocks=blocks))


@pytest.mark.slow
def test_the_cli_says_how_many_blocks_fit(tmp_path):
    path = tmp_path / "big.toml"
    pool = 65536 * 16 * 2 * 24 * 2 * 64 * 8  # the most a file may ask: small in float64, 48 GiB
    if free_memory_bytes(__import__("torch").device("cpu")) * 0.9 > pool:
        pytest.skip("this machine has more free RAM than a scenario file can ask a pool for")
    text = HEAD.replace('"tiny"', '"small"\ndtype = "float64"') + "num_blocks = 65536\n"
    path.write_text(text + '[[requests]]\nprompt = "ab"\nmax_new_tokens = 1\n')
    res = subprocess.run([sys.executable, "-m", "cbtui", "scenario", str(path), "--headless"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "use num_blocks <=" in res.stderr
