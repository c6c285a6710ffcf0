"""This engine on a workload, continuous (fcfs) or static, timed without its warm-up."""

from __future__ import annotations

import gc
import time

import torch

from engine import Engine, EngineConfig
from engine.attention.flex import compile_failures

from .metrics import RunResult
from .workloads import Workload, warmup_workload


def engine_config(workload: Workload, policy: str, device: str, dtype: str, attention: str,
                  max_tokens_per_step: int, decode_graphs: str = "auto", decode_attention: str = "auto",
                  overlap_steps: bool = False) -> EngineConfig:
    longest = max(len(p) for p in workload.prompts)
    return EngineConfig(model=workload.model, device=device, dtype=dtype, attention=attention, policy=policy,
                        max_tokens_per_step=max_tokens_per_step,
                        prefill_chunk_size=min(max_tokens_per_step, longest),
                        static_batch_size=workload.static_batch_size, kv_layout="paged", block_size=16, seed=0,
                        decode_graphs=decode_graphs, decode_attention=decode_attention, overlap_steps=overlap_steps)


def _submit(engine: Engine, workload: Workload) -> list[int]:
    return [engine.add_request(p, max_new_tokens=n) for p, n in zip(workload.prompts, workload.max_new_tokens)]


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def run_ours(workload: Workload, policy: str = "fcfs", device: str = "auto", dtype: str = "auto",
             attention: str = "auto", max_tokens_per_step: int = 8192, decode_graphs: str = "auto",
             decode_attention: str = "auto", overlap_steps: bool = False,
             name: str | None = None) -> tuple[RunResult, Engine]:
    """Warm up on a small workload (and capture the decode graphs the workload can use, as an
    engine does at start-up), then time the real one on the same engine."""
    config = engine_config(workload, policy, device, dtype, attention, max_tokens_per_step, decode_graphs,
                           decode_attention, overlap_steps)
    engine = Engine(config)
    _submit(engine, warmup_workload(workload.model))
    engine.run_until_done()
    graphs, graph_note = engine.decode_graphs, ""
    if graphs is not None and graphs.capture:
        longest = max(len(p) + n for p, n in zip(workload.prompts, workload.max_new_tokens))
        most = workload.num_requests if policy == "fcfs" else workload.static_batch_size  # decodes at once
        built = graphs.capture_up_to(most, longest)
        graph_note = f"{built} decode graphs captured in {graphs.capture_s:.1f} s before timing"
        if graphs.broken:
            graph_note += f"; capture failed, decodes eager: {graphs.broken}"
    _sync(engine)
    replays_before = graphs.replays if graphs is not None else 0
    record_before, steps_before = engine.record_s, engine.step_s
    kinds_before = {k: list(v) for k, v in engine.time_by_kind.items()}

    first_step = engine.step_index
    start = time.perf_counter()
    ids = _submit(engine, workload)
    engine.run_until_done()
    _sync(engine)
    wall = time.perf_counter() - start

    reqs = [engine.requests[i] for i in ids]
    name = name or ("ours continuous" if policy == "fcfs" else "ours static")
    decode = engine.decode_attention.name
    if engine.decode_attention.broken:
        decode += f" (failed, gather used: {engine.decode_attention.broken})"
    attention = engine.attention_name
    failed = compile_failures(engine.device, engine.dtype) if attention == "flex" else []
    if failed:
        attention += f" (compiled kernel failed, prefill rows fell back: {failed[0]})"
    note = (f"{attention} attention, {decode} decode attention, budget {config.max_tokens_per_step} "
            f"tokens/step, {engine.num_blocks} KV blocks of {config.block_size}")
    if policy == "static":
        note += f", batch {config.static_batch_size}"
    if overlap_steps:
        # Times are stamped when a step's tokens are read back, after the next step is launched.
        note += (", overlapped steps (each scheduled while the previous one runs; TTFT and TPOT stamped at "
                 "read-back, up to one step late)")
    if graphs is not None:
        note += f"; {graphs.replays - replays_before} decode steps from graphs" + (f" ({graph_note})" if graph_note else "")
    elif engine.device.type == "cuda":
        note += "; decode graphs off"
    result = RunResult(name, note=note, wall_s=wall, prompt_tokens=workload.prompt_tokens,
                       output_tokens=sum(len(r.output) for r in reqs), steps=engine.step_index - first_step,
                       outputs=[list(r.output) for r in reqs],
                       record_share=(engine.record_s - record_before) / max(engine.step_s - steps_before, 1e-9))
    result.note += f"; StepRecords {100 * result.record_share:.1f}% of step time"
    timed = engine.device_timer is not None
    for kind, (seconds, steps, device_s) in engine.time_by_kind.items():
        before = kinds_before[kind]
        seconds, steps, device_s = seconds - before[0], steps - before[1], device_s - before[2]
        result.step_time[kind] = {"steps": steps, "seconds": seconds, "device_seconds": device_s if timed else None}
        if steps:
            result.note += f"; {kind} steps {steps} x {1000 * seconds / steps:.1f} ms"
            if timed:
                result.note += f" (GPU forward span {1000 * device_s / steps:.1f} ms)"
    for r in reqs:
        result.ttft_s.append(r.first_token_time - start)
        if len(r.output) > 1:
            result.tpot_s.append((r.finish_time - r.first_token_time) / (len(r.output) - 1))
    return result, engine


def release(engine: Engine) -> None:
    """Frees an engine's KV pool, weights and graphs before the next system is built, even while
    the caller still holds the engine (the next one sizes its pool from the free memory)."""
    for big in ("model", "kv", "model_cache", "layer_attention", "decode_graphs", "scheduler"):
        setattr(engine, big, None)
    free_memory(engine.device)


def free_memory(device: torch.device) -> None:
    """Collects what nothing references any more and hands the freed GPU memory back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
