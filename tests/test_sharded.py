"""KV sharded over real worker processes (gloo on loopback): exact, watched, cleaned up.

Greedy outputs with 2 shards (by heads and by sequence; paged; a pool small enough to force
preemption) equal each request run alone on one device, in float64 on the CPU, over seeded random
workloads. A worker killed or stopped mid-run ends the run with one line naming its rank, within
the collective timeout; no worker outlives its engine. Every engine here is tiny and every wait
is bounded (shard_timeout_s, and an alarm around each test).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import exact_config, run_alone, sharded_time_limit

from engine import Engine, EngineConfig
from engine.distributed import ShardFailure
from engine.distributed.split_attention import merge_partials, partial_attention
from engine.records import StepRecord
from engine.records.schema import check_record_json

TIMEOUT_S = 20.0  # collectives; a test's alarm is a few times this


@pytest.fixture(autouse=True)
def bounded():
    yield from sharded_time_limit()


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def sharded(shard_by: str, **kw) -> Engine:
    base = dict(kv_layout="paged", block_size=4, num_blocks=10, max_tokens_per_step=24, prefill_chunk_size=8,
                shards=2, shard_by=shard_by, shard_timeout_s=TIMEOUT_S)
    base.update(kw)
    return Engine(exact_config(**base))


def random_workload(rng: random.Random, n: int, first_id: int) -> list[dict]:
    return [{"prompt": [rng.randrange(256) for _ in range(rng.randint(1, 24))],
             "max_new_tokens": rng.randint(1, 10), "arrival_step": rng.randint(0, 4),
             "request_id": first_id + i} for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("shard_by", ["heads", "sequence"])
def test_two_shards_greedy_equals_one_device_alone(shard_by):
    """Three seeded random workloads, one after another, on one sharded engine (one worker start)."""
    rng = random.Random(20 + len(shard_by))
    preempted = 0
    # The largest request (24 + 10 tokens) needs 9 blocks of 4: a pool just big enough for it.
    with sharded(shard_by, num_blocks=9 if shard_by == "heads" else 5) as eng:
        pid = eng.runner.worker_pids[0]
        for round_ in range(3):
            workload = random_workload(rng, 5, 100 * round_)
            for spec in workload:
                spec["arrival_step"] += eng.step_index
                eng.add_request(**spec)
            while eng.has_unfinished():
                record = eng.step()
                preempted += len(record.preempted)
                assert record.comm is not None and (record.comm.bytes > 0) == bool(record.items)
                assert len(record.shards) == 2
                check_shard_views(record, shard_by)
            for spec in workload:
                assert eng.requests[spec["request_id"]].output == run_alone(spec["prompt"], spec["max_new_tokens"]), \
                    (shard_by, spec)
    assert preempted > 0  # the pool was short: preemption was exercised
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "the worker outlived engine.close()"


def check_shard_views(record: StepRecord, shard_by: str) -> None:
    """The shards' pools add up to the step's KV view, and the record survives JSON."""
    kv, shards = record.kv, record.shards
    if shard_by == "heads":  # every shard holds its heads of every block: the same tables
        assert all(dict(s.block_tables) == dict(kv.block_tables) and s.blocks_used == kv.blocks_used for s in shards)
    else:  # each block on exactly one shard, in its own pool
        assert sum(s.blocks_used for s in shards) == kv.blocks_used
        for rid, table in kv.block_tables.items():
            assert sorted(s.first_block + b for s in shards for b in s.block_tables.get(rid, ())) == sorted(table)
    assert kv.pool_bytes == sum(s.pool_bytes for s in shards)
    data = json.loads(json.dumps(record.to_dict()))
    check_record_json(data)
    assert StepRecord.from_dict(data).to_dict() == data




def test_split_attention_merged_by_lse_equals_full_attention():
    gen = torch.Generator().manual_seed(0)
    t, k, heads, kv_heads, d = 5, 23, 4, 2, 8
    q = torch.randn(t, heads, d, generator=gen, dtype=torch.float64)
    keys = torch.randn(k, kv_heads, d, generator=gen, dtype=torch.float64)
    values = torch.randn(k, kv_heads, d, generator=gen, dtype=torch.float64)
    q_pos, k_pos = torch.arange(k - t, k), torch.arange(k)
    full, _ = partial_attention(q, keys, values, q_pos, k_pos)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), keys.repeat_interleave(2, 1).transpose(0, 1), values.repeat_interleave(2, 1).transpose(0, 1),
        attn_mask=k_pos[None, :] <= q_pos[:, None]).transpose(0, 1)
    torch.testing.assert_close(full, expected)
    owner = torch.tensor([(p // 4) % 3 for p in range(k)])  # blocks of 4 dealt over 3 shards
    parts = [partial_attention(q, keys[owner == s], values[owner == s], q_pos, k_pos[owner == s]) for s in range(3)]
    merged = merge_partials(torch.stack([o for o, _ in parts]), torch.stack([lse for _, lse in parts]))
    torch.testing.assert_close(merged, expected)
    # a shard holding none of the keys a query may see contributes nothing (lse -inf, weight 0)
    early = partial_attention(q[:1], keys[20:], values[20:], torch.tensor([3]), k_pos[20:])
    assert torch.isinf(early[1]).all() and (early[0] == 0).all()


def test_more_head_shards_than_kv_heads_is_refused_in_one_line_before_any_process_starts():
    with pytest.raises(ValueError, match=r"shards=4 with shard_by='heads': model 'tiny' has 2 KV heads") as exc:
        Engine(exact_config(shards=4, shard_by="heads"))
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="kv_layout='paged'"):
        exact_config(shards=2, kv_layout="dense")


def _step_until_failure(eng: Engine, limit_s: float) -> tuple[ShardFailure, float]:
    start = time.monotonic()
    with pytest.raises(ShardFailure) as exc:
        while time.monotonic() - start < limit_s:
            eng.step()
            eng.add_request(list(range(1, 12)), max_new_tokens=4)
    return exc.value, time.monotonic() - start


def test_a_killed_worker_ends_the_run_in_one_line_naming_its_rank():
    eng = sharded("sequence")
    eng.add_request(list(range(30)), max_new_tokens=30)
    for _ in range(3):
        eng.step()
    pid = eng.runner.worker_pids[0]
    os.kill(pid, signal.SIGKILL)
    failure, took = _step_until_failure(eng, 30)
    message = str(failure)
    assert "rank 1" in message and "code -9 (SIGKILL)" in message and "\n" not in message, message
    assert took < 10
    assert not alive(pid)
    with pytest.raises(ShardFailure, match="rank 1"):  # the engine stays failed, and says why
        eng.step()
    eng.close()


@pytest.mark.slow
def test_a_hung_worker_ends_the_run_within_the_timeout_naming_its_rank():
    eng = sharded("heads", shard_timeout_s=3.0, num_blocks=32)
    eng.add_request(list(range(30)), max_new_tokens=30)
    eng.step()
    pid = eng.runner.worker_pids[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        failure, took = _step_until_failure(eng, 60)
    finally:
        os.kill(pid, signal.SIGCONT) if alive(pid) else None
    message = str(failure)
    assert "rank 1" in message and "did not answer within 3 s" in message and "\n" not in message, message
    assert took < 3 + 15
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)  # the hung worker was killed, not left behind
    eng.close()


SCRIPT = """
import sys
from engine import Engine, EngineConfig
eng = Engine(EngineConfig(model="tiny", device="cpu", shards=2, shard_by=sys.argv[1], num_blocks=8, block_size=4))
eng.add_request([1, 2, 3], max_new_tokens=2)
eng.run_until_done()
print(eng.runner.worker_pids[0], flush=True)
{ending}
"""


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["pass", "del eng; import gc; gc.collect(); import time; time.sleep(30)",
                                    "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
                         ids=["exit", "garbage-collected", "driver-killed"])
def test_no_worker_outlives_its_engine(ending, tmp_path):
    """The process exits (atexit), the engine is collected (weakref.finalize), or the driver itself
    is killed (the worker dies with its parent): the worker is gone each time."""
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(ending=ending), "heads"],
                            stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    deadline = time.monotonic() + 15
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"worker {pid} outlived its engine ({ending})"
    proc.kill()
    proc.wait(timeout=10)


LONG_RUN = """
title = "long"
description = "a long sharded run to kill a worker in"
question = "Does a dead worker end the run?"
[engine]
model = "tiny"
device = "cpu"
shards = 2
shard_by = "heads"
shard_timeout_s = 20
[[requests]]
prompt_len = 8
max_new_tokens = 4000
"""


@pytest.mark.slow
def test_a_killed_worker_ends_a_headless_run_with_exit_code_2_and_one_line(tmp_path):
    path = tmp_path / "long.toml"
    path.write_text(LONG_RUN)
    proc = subprocess.Popen([sys.executable, "-m", "cbtui", "scenario", str(path), "--headless"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        worker, deadline = None, time.monotonic() + 60
        while worker is None and time.monotonic() < deadline and proc.poll() is None:
            worker = next((pid for pid in _children(proc.pid) if b"engine.distributed.worker" in _cmdline(pid)), None)
            time.sleep(0.1)
        assert worker is not None, "no worker process appeared"
        time.sleep(2.0)  # mid-run: the model is built and steps are running
        os.kill(worker, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert len(lines) == 1 and "rank 1" in lines[0] and "SIGKILL" in lines[0], err
    assert not alive(worker)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shard_by", ["heads", "sequence"])
def test_two_shards_on_cuda_equal_one_device(shard_by):
    """2 shards on the GPU(s) there are (NCCL with one GPU each, else gloo through the host), float64:
    the same greedy tokens as one device."""
    rng = random.Random(7)
    workload = random_workload(rng, 6, 0)
    outputs = []
    for shards in (1, 2):
        config = exact_config(device="cuda", attention="sdpa", decode_graphs="off", block_size=4, num_blocks=12,
                              max_tokens_per_step=24, prefill_chunk_size=8, shards=shards, shard_by=shard_by,
                              shard_timeout_s=TIMEOUT_S)
        with Engine(config) as eng:
            for spec in workload:
                eng.add_request(**spec)
            eng.run_until_done()
            outputs.append([eng.requests[spec["request_id"]].output for spec in workload])
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_an_engine_built_in_a_thread_that_ends_keeps_its_workers():
    """The workers watch their parent process, not the thread that started them."""
    import threading

    built: list[Engine] = []
    thread = threading.Thread(target=lambda: built.append(sharded("heads", num_blocks=16)))
    thread.start()
    thread.join(timeout=100)
    with built[0] as eng:
        time.sleep(1.0)  # time for a thread-bound death signal to land, were there one
        rid = eng.add_request([5, 6, 7], max_new_tokens=3)
        assert eng.run_until_done()[rid] == run_alone([5, 6, 7], 3)


@pytest.mark.parametrize("setting, words", [
    (dict(prefix_caching=True), "prefix blocks"),
    (dict(speculative="ngram"), "drafts"),
    (dict(model="CHECKPOINT"), "random presets"),
])
def test_what_shards_do_not_run_yet_is_refused_in_one_line(setting, words, tmp_path):
    if setting.get("model") == "CHECKPOINT":
        setting = dict(model=str(tmp_path))  # a directory: the shard check speaks, not the loader
    with pytest.raises(ValueError) as err:
        EngineConfig(shards=2, **setting)
    assert words in str(err.value) and "shards=1" in str(err.value) and "\n" not in str(err.value)


def test_a_sharded_run_leaves_prefix_caching_off_by_default():
    assert not EngineConfig(shards=2).caches_prefixes and EngineConfig(shards=1).caches_prefixes
