"""Host-side cost of one step: scheduling, batch building, KV bookkeeping and the StepRecord.

The model is swapped for one that returns zero logits at once, so what is left is exactly the
per-step host work that a GPU would wait on.
"""

from __future__ import annotations

import platform
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from engine import Engine, EngineConfig
from engine.records import StepRecord


class NullModel(torch.nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, token_ids, positions, sample_rows, kv_cache, attention, meta):
        return torch.zeros(sample_rows.shape[0], self.vocab_size)

    def reserve_positions(self, positions: int) -> bool:
        return False  # no rope table

    def weight_bytes(self) -> int:
        return 0


def _step(engine: Engine) -> StepRecord:
    record = engine.step()
    assert record is not None  # overlap_steps is off: every step hands over its own record
    return record


def run_host_bench(num_requests: int, steps: int, prompt_len: int = 32, policy: str = "fcfs",
                   static_batch_size: int = 64) -> dict:
    """fcfs: every request decodes in the timed steps. static: a batch of static_batch_size decodes
    while the other requests wait (the bench's static baseline, whose queue is scanned each step)."""
    torch.set_num_threads(1)  # as the CLI runs the tiny model: small ops lose to thread hand-offs
    block_size = 16
    per_request = -(-(prompt_len + steps + 8) // block_size)
    # The budget takes every prompt at once: one prefill step for all.
    config = EngineConfig(model="tiny", device="cpu", max_tokens_per_step=num_requests * prompt_len,
                          prefill_chunk_size=prompt_len, block_size=block_size,
                          num_blocks=num_requests * per_request, attention="sdpa", policy=policy,
                          static_batch_size=static_batch_size)
    engine = Engine(config)
    engine.runner.model = NullModel(engine.runner.spec.vocab_size)  # host work alone: no forward pass
    for i in range(num_requests):
        engine.add_request([(i + j) % 256 for j in range(prompt_len)], max_new_tokens=steps + 4)
    decoding = num_requests if policy == "fcfs" else min(num_requests, static_batch_size)
    rec = _step(engine)
    while sum(v.state == "decode" for v in rec.requests) < decoding:
        rec = _step(engine)  # prefill first: the timed steps are pure decode
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.thread_time()
        timed = engine.step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.thread_time() - cpu_start)  # robust to other processes on the box
        assert timed is not None and timed.decode_tokens == decoding and timed.prefill_tokens == 0
    result = {
        "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
        "policy": policy, "requests": num_requests, "decoding_requests": decoding, "steps": steps,
        "host_ms_median": statistics.median(times) * 1e3, "host_ms_p90": sorted(times)[int(0.9 * len(times))] * 1e3,
        "host_cpu_ms_median": statistics.median(cpu_times) * 1e3,
    }
    waiting = f", {num_requests - decoding} waiting" if num_requests > decoding else ""
    table = Table(title=f"host overhead per step, {policy}: {decoding} decoding requests{waiting} "
                        f"({result['machine']})")
    table.add_column("median ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("thread CPU ms (median)", justify="right")
    table.add_column("goal ms", justify="right")
    table.add_row(f"{result['host_ms_median']:.2f}", f"{result['host_ms_p90']:.2f}",
                  f"{result['host_cpu_ms_median']:.2f}", "2.00")
    Console().print(table)
    return result
