"""Where a step's time goes on CUDA: the anchor workload's prefill and decode steps, timed and profiled.

    python scripts/profile_step.py [SCALE]

Prints per-phase step times (the first steps include compilation) with the GPU's span of each
forward pass, the share of step time spent building StepRecords, and torch.profiler tables (GPU
kernels, then host operators) for one step with prefill and for three decode-only steps.
scripts/gpu_check.sh runs it when the bench misses its goal and time is left.
"""

from __future__ import annotations

import statistics
import sys
import time

from torch.profiler import ProfilerActivity, profile

from cbtui.bench.workloads import make_workload
from engine import Engine, EngineConfig

COMPILE_STEPS = 3  # the first steps compile kernels: timed apart


def _profiled(eng: Engine, steps: int, label: str) -> None:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            record = eng.step()
    avg = prof.key_averages()
    # kernel rows only: operator rows repeat their kernels' time
    kernels_ms = sum(e.self_device_time_total for e in avg if str(e.device_type).endswith("CUDA")) / steps / 1000
    print(f"\n{steps} {label} step(s) profiled ({record.decode_tokens} decode + {record.prefill_tokens} prefill "
          f"tokens in the last): GPU kernel time per step {kernels_ms:.1f} ms")
    print(avg.table(sort_by="self_device_time_total", row_limit=8, max_name_column_width=50))
    print(avg.table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=50))


def main() -> None:
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    w = make_workload("anchor", scale=scale, model="small")
    eng = Engine(EngineConfig(model="small", device="cuda", dtype="bfloat16", attention="flex",
                              max_tokens_per_step=8192, prefill_chunk_size=1024))
    for p, n in zip(w.prompts, w.max_new_tokens, strict=True):
        eng.add_request(p, max_new_tokens=n)
    timings: dict[str, list[tuple[float, float]]] = {"with prefill": [], "decode-only": []}  # (host s, GPU s)
    record_s = step_s = 0.0
    profiled_prefill = False
    while eng.has_unfinished() and len(timings["decode-only"]) < 20:
        if not profiled_prefill and eng.step_index == COMPILE_STEPS + 1 and eng.scheduler.waiting:
            _profiled(eng, 1, "with-prefill")
            profiled_prefill = True
            continue
        record = eng.step()
        record_s, step_s = record_s + record.record_time_s, step_s + record.wall_time_s
        if record.items:
            kind = "with prefill" if record.prefill_tokens else "decode-only"
            timings[kind].append((record.wall_time_s, record.device_time_s or 0.0))
    print(f"{w.num_requests} requests; first {COMPILE_STEPS} steps (compile): "
          f"{[round(1000 * t[0]) for t in timings['with prefill'][:COMPILE_STEPS]]} ms")
    for kind, rows in timings.items():
        rows = rows[COMPILE_STEPS:] if kind == "with prefill" else rows[2:]
        if rows:
            print(f"{kind} steps {len(rows)}: median host {1000 * statistics.median(r[0] for r in rows):.2f} ms, "
                  f"GPU forward span {1000 * statistics.median(r[1] for r in rows):.2f} ms")
    print(f"StepRecords: {100 * record_s / max(step_s, 1e-9):.1f}% of step time; "
          f"{eng.runner.decode_graphs.replays if eng.runner.decode_graphs else 0} decode steps from graphs "
          f"(capture {eng.runner.decode_graphs.capture_s if eng.runner.decode_graphs else 0:.1f} s, on first use)")
    if not profiled_prefill:
        print("no step with prefill was left to profile after the compile steps (a larger SCALE has some)")
    start = time.perf_counter()
    _profiled(eng, 3, "decode-only")
    print(f"(profiling took {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
