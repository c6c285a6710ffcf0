"""This engine on a workload, continuous (fcfs) or static, timed without its warm-up."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import torch

from engine import Engine, EngineConfig
from engine.attention.flex import compile_failures
from engine.records import StepRecord

from .metrics import RunResult
from .workloads import Workload, warmup_workload


def engine_config(workload: Workload, policy: str, device: str, dtype: str, attention: str,
                  max_tokens_per_step: int, decode_graphs: str = "auto", decode_attention: str = "auto",
                  overlap_steps: bool = False, speculative: str | None = None,
                  num_speculative_tokens: int = 4, prefix_caching: bool | None = None) -> EngineConfig:
    longest = max(len(p) for p in workload.prompts)
    return EngineConfig(model=workload.model, device=device, dtype=dtype, attention=attention, policy=policy,
                        max_tokens_per_step=max_tokens_per_step,
                        prefill_chunk_size=min(max_tokens_per_step, longest),
                        static_batch_size=workload.static_batch_size, kv_layout="paged", block_size=16, seed=0,
                        decode_graphs=decode_graphs, decode_attention=decode_attention, overlap_steps=overlap_steps,
                        speculative=speculative, num_speculative_tokens=num_speculative_tokens,
                        prefix_caching=prefix_caching,
                        # every system generates exactly max_new_tokens, unless the workload stops at end of sequence
                        ignore_eos=not workload.stop_ids)


def _submit(engine: Engine, workload: Workload) -> list[int]:
    pairs = zip(workload.prompts, workload.max_new_tokens, strict=True)
    return [engine.add_request(p, max_new_tokens=n) for p, n in pairs]


def _sync(engine: Engine) -> None:
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize(engine.runner.device)


@dataclass
class StepTotals:
    """What the bench reads from a run's StepRecords, kept as running totals (never every record)."""

    start: float  # perf_counter() when the timed run began
    steps: int = 0
    record_s: float = 0.0
    step_s: float = 0.0
    by_kind: dict = field(default_factory=lambda: {kind: [0.0, 0, 0.0] for kind in ("decode-only", "with prefill")})
    first_token_s: dict[str, float] = field(default_factory=dict)  # request id -> seconds from start
    last_token_s: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    timed_on_device: bool = False
    drafts_proposed: int = 0  # speculation
    drafts_accepted: int = 0
    decodes: int = 0
    cached_tokens: int = 0  # prompt tokens the prefix cache handed out instead of their prefill

    def observe(self, record: StepRecord) -> None:
        # Token times are when the record comes back: overlapped steps hand theirs over a step late.
        now = time.perf_counter() - self.start
        self.steps += 1
        self.record_s += record.record_time_s
        self.step_s += record.wall_time_s
        if record.items:
            kind = self.by_kind["with prefill" if record.prefill_tokens else "decode-only"]
            kind[0] += record.wall_time_s
            kind[1] += 1
            if record.device_time_s is not None:
                kind[2] += record.device_time_s
                self.timed_on_device = True
        accepted = {}
        if record.decode_tokens:
            for item in record.items:
                if item.kind == "decode":
                    self.decodes += 1
                    if item.drafts:  # a speculating decode emits its accepted drafts too
                        self.drafts_proposed += item.drafts
                        self.drafts_accepted += item.accepted
                        accepted[str(item.request_id)] = item.accepted
        if record.kv.prefix is not None:
            self.cached_tokens += record.kv.prefix.hit_tokens
        for rid in record.sampled:
            self.first_token_s.setdefault(rid, now)
            self.last_token_s[rid] = now
            self.tokens[rid] = self.tokens.get(rid, 0) + 1 + accepted.get(rid, 0)


def _drive(engine: Engine, totals: StepTotals | None = None) -> None:
    """Steps the engine to the end, handing each record to `totals`."""
    while engine.has_unfinished():
        record = engine.step()
        if record is not None and totals is not None:
            totals.observe(record)


def run_ours(workload: Workload, policy: str = "fcfs", device: str = "auto", dtype: str = "auto",
             attention: str = "auto", max_tokens_per_step: int = 8192, decode_graphs: str = "auto",
             decode_attention: str = "auto", overlap_steps: bool = False, speculative: str | None = None,
             num_speculative_tokens: int = 4, prefix_caching: bool | None = None,
             name: str | None = None) -> tuple[RunResult, Engine]:
    """Warm up on a small workload (and capture the decode graphs the workload can use, as an
    engine does at start-up), then time the real one on the same engine."""
    config = engine_config(workload, policy, device, dtype, attention, max_tokens_per_step, decode_graphs,
                           decode_attention, overlap_steps, speculative, num_speculative_tokens, prefix_caching)
    engine = Engine(config)
    runner = engine.runner
    _submit(engine, warmup_workload(workload.model))
    _drive(engine)
    graphs, graph_note = runner.decode_graphs, ""
    if graphs is not None and graphs.capture:
        longest = max(len(p) + n for p, n in zip(workload.prompts, workload.max_new_tokens, strict=True))
        most = workload.num_requests if policy == "fcfs" else workload.static_batch_size  # decodes at once
        built = graphs.capture_up_to(most, longest)
        graph_note = f"{built} decode graphs captured in {graphs.capture_s:.1f} s before timing"
        if graphs.broken:
            graph_note += f"; capture failed, decodes eager: {graphs.broken}"
    _sync(engine)
    replays_before = graphs.replays if graphs is not None else 0

    start = time.perf_counter()
    totals = StepTotals(start)
    ids = _submit(engine, workload)
    _drive(engine, totals)
    _sync(engine)
    wall = time.perf_counter() - start

    header = engine.header()
    outputs = engine.outputs()
    name = name or ("ours continuous" if policy == "fcfs" else "ours static")
    decode = runner.decode_attention.name
    if runner.decode_attention.broken:
        decode += f" (failed, gather used: {runner.decode_attention.broken})"
    elif getattr(runner.decode_attention, "unused_kernel", None):
        decode += f" (no {runner.decode_attention.unused_kernel})"
    attention = header.attention
    failed = compile_failures(runner.device, runner.dtype) if attention == "flex" else []
    if failed:
        attention += f" (compiled kernel failed, prefill rows fell back: {failed[0]})"
    note = (f"{attention} attention, {decode} decode attention, budget {config.scheduler.max_tokens_per_step} "
            f"tokens/step, {header.num_blocks} KV blocks of {config.cache.block_size}")
    if policy == "static":
        note += f", batch {config.scheduler.static_batch_size}"
    if not config.caches_prefixes:
        note += ", no prefix caching"
    elif workload.shared_prefixes:
        note += (f", prefix caching: {totals.cached_tokens} of {workload.prompt_tokens} prompt tokens "
                 f"({100 * totals.cached_tokens / workload.prompt_tokens:.0f}%) from the cache")
    if overlap_steps:
        # Times are stamped when a step's tokens are read back, after the next step is launched.
        note += (", overlapped steps (each scheduled while the previous one runs; TTFT and TPOT stamped at "
                 "read-back, up to one step late)")
    if graphs is not None:
        note += f"; {graphs.replays - replays_before} decode steps from graphs"
        note += f" ({graph_note})" if graph_note else ""
    elif header.device == "cuda":
        note += "; decode graphs off"
    record_share = totals.record_s / max(totals.step_s, 1e-9)
    result = RunResult(name, note=note, wall_s=wall, prompt_tokens=workload.prompt_tokens,
                       output_tokens=sum(len(outputs[i]) for i in ids), steps=totals.steps,
                       outputs=[outputs[i] for i in ids], record_share=record_share)
    result.note += f"; StepRecords {100 * record_share:.1f}% of step time"
    for kind, (seconds, steps, device_s) in totals.by_kind.items():
        timed = totals.timed_on_device
        result.step_time[kind] = {"steps": steps, "seconds": seconds, "device_seconds": device_s if timed else None}
        if steps:
            result.note += f"; {kind} steps {steps} x {1000 * seconds / steps:.1f} ms"
            if timed:
                result.note += f" (GPU forward span {1000 * device_s / steps:.1f} ms)"
    if speculative:
        proposed, accepted = totals.drafts_proposed, totals.drafts_accepted
        result.speculation = {
            "proposer": header.speculative, "drafts_proposed": proposed, "drafts_accepted": accepted,
            "acceptance_rate": accepted / proposed if proposed else None,
            "tokens_per_step_per_request": (totals.decodes + accepted) / totals.decodes if totals.decodes else None}
        rate = f" ({100 * accepted / proposed:.0f}%)" if proposed else ""
        result.note += (f"; speculative {header.speculative}: {accepted} of {proposed} drafts accepted{rate}, "
                        f"{result.speculation['tokens_per_step_per_request'] or 0:.2f} tokens per decode")
    for rid in map(str, ids):
        result.ttft_s.append(totals.first_token_s[rid])
        if totals.tokens[rid] > 1:
            result.tpot_s.append((totals.last_token_s[rid] - totals.first_token_s[rid]) / (totals.tokens[rid] - 1))
    return result, engine


def release(engine: Engine) -> None:
    """Frees an engine's KV pool, weights and graphs before the next system is built, even while
    the caller still holds the engine (the next one sizes its pool from the free memory)."""
    device = engine.runner.device
    for big in ("model", "kv", "model_cache", "layer_attention", "decode_graphs"):
        setattr(engine.runner, big, None)
    engine.scheduler = engine.recorder = None  # type: ignore[assignment]  # they hold the KV cache too
    free_memory(device)


def free_memory(device: torch.device) -> None:
    """Collects what nothing references any more and hands the freed GPU memory back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
