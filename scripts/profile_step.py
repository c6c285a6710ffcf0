"""Where a step's time goes on CUDA: the anchor workload's prefill and decode steps, timed and profiled.

    python scripts/profile_step.py [SCALE]

Prints per-phase step times (first steps include compilation), the share of the step spent
building the StepRecord, and torch.profiler tables (GPU kernels; host operators) for decode steps.
"""

from __future__ import annotations

import statistics
import sys
import time

from torch.profiler import ProfilerActivity, profile

from cbtui.bench.workloads import make_workload
from engine import Engine, EngineConfig


def main() -> None:
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    w = make_workload("anchor", scale=scale, model="small")
    eng = Engine(EngineConfig(model="small", device="cuda", dtype="bfloat16", attention="flex",
                              max_tokens_per_step=8192, prefill_chunk_size=1024))
    record_time = []
    real_record = eng._record

    def timed_record(*a, **k):
        t = time.perf_counter()
        out = real_record(*a, **k)
        record_time.append(time.perf_counter() - t)
        return out

    eng._record = timed_record
    for p, n in zip(w.prompts, w.max_new_tokens):
        eng.add_request(p, max_new_tokens=n)
    prefill, decode = [], []
    while eng.has_unfinished() and len(decode) < 20:
        t = time.perf_counter()
        r = eng.step()
        dt = time.perf_counter() - t
        (prefill if r.prefill_tokens else decode).append((dt, r.decode_tokens + r.prefill_tokens, record_time[-1]))
    ms = lambda xs: f"{1000 * statistics.median(xs):.1f} ms"  # noqa: E731
    print(f"{w.num_requests} requests; first 3 prefill steps (compile): "
          f"{[round(1000 * p[0]) for p in prefill[:3]]} ms")
    print(f"prefill steps {len(prefill)}: median {ms([p[0] for p in prefill[3:]] or [0])}, "
          f"median tokens {statistics.median([p[1] for p in prefill])}")
    print(f"decode steps {len(decode)}: median {ms([d[0] for d in decode[2:]])} for "
          f"{decode[-1][1]} decodes; record {ms([d[2] for d in decode[2:]])}; "
          f"{eng.decode_graphs.replays if eng.decode_graphs else 0} from decode graphs "
          f"(capture {eng.decode_graphs.capture_s if eng.decode_graphs else 0:.1f} s, first use)")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            eng.step()
    avg = prof.key_averages()
    # kernel rows only: operator rows repeat their kernels' time
    total_cuda = sum(e.self_device_time_total for e in avg if str(e.device_type).endswith("CUDA")) / 3 / 1000
    print(f"3 decode steps profiled: GPU kernel time per step {total_cuda:.1f} ms")
    print(avg.table(sort_by="self_device_time_total", row_limit=10, max_name_column_width=50))
    print(avg.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
