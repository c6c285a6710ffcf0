"""One benchmark run: every system, one after another, in this process, on the same weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.model_runner import resolve_device

from ..frozen_heap import frozen_heap
from .machine import machine_info
from .metrics import RunResult
from .ours import free_memory, release, run_ours
from .workloads import Workload, make_workload

DEFAULT_CPU_SCALE = 1 / 16
INTERRUPTED = "interrupted while running (Ctrl-C or a time limit)"
NOT_RUN = "not run: the bench was interrupted before it"
CUDA_BUDGET, CPU_BUDGET = 8192, 2048  # max tokens per step of our engine


def default_scale(device: torch.device) -> float:
    return 1.0 if device.type == "cuda" else DEFAULT_CPU_SCALE


def run_bench(workload_name: str, scale: float | None = None, device: str = "auto", model: str | None = None,
              attention: str = "auto", hf: bool = True, ablations: bool = True, progress=lambda msg: None,
              on_row=lambda report: None) -> dict:
    """Runs the systems on a named workload; returns the report dict (what --json prints)."""
    dev = resolve_device(device)
    scale = default_scale(dev) if scale is None else scale
    model = model or ("small" if dev.type == "cuda" else "tiny")
    workload = make_workload(workload_name, scale=scale, model=model)
    return run_systems(workload, device, attention, hf, progress, ablations=ablations, on_row=on_row)


def run_systems(workload: Workload, device: str = "auto", attention: str = "auto", hf: bool = True,
                progress=lambda msg: None, ablations: bool | Sequence[tuple[str, dict]] = True,
                on_row=lambda report: None) -> dict:
    """Every system on one workload, one after another, on the same weights.

    Interrupted (Ctrl-C, or SIGTERM from a time limit: bench_cli) after ours continuous, it still
    returns the report: the systems measured, the one cut short and those not run, and
    report["interrupted"]. Interrupted before that, KeyboardInterrupt propagates: nothing to report.
    on_row gets the report so far after each system (the rest marked not run, "interrupted" true
    until the end), so a process killed outright still leaves what it measured (bench --out).
    ablations: True runs ablation_rows() on CUDA (a CPU run has no fast path to measure), False none,
    or a list of (name, engine setting) rows runs those, on any device."""
    dev = resolve_device(device)
    dtype = "bfloat16" if dev.type == "cuda" else "float32"
    budget = CUDA_BUDGET if dev.type == "cuda" else CPU_BUDGET

    progress(f"ours continuous: {workload.num_requests} requests")
    with frozen_heap():
        ours, engine = run_ours(workload, "fcfs", device, dtype, attention, budget)
    progress(_line(ours))
    attention_name = engine.header().attention
    if isinstance(ablations, bool):
        ablations = ablation_rows(engine.header().decode_path) if ablations and _measures_gpu_pieces(dev) else []

    from .hf_systems import CB_NAME, STATIC_NAME, run_hf_generate_batch, run_hf_static

    order = ["ours continuous", "ours static", CB_NAME, STATIC_NAME] + [name for name, _ in ablations]
    results = {ours.system: ours}
    running = None  # the system being measured when an interrupt comes

    def report_so_far(interrupted: bool) -> dict:
        rows = [results.get(name) or RunResult(name, available=False, note=INTERRUPTED if name == running else NOT_RUN)
                for name in order]
        report = _report(dev, workload, dtype, attention_name, budget, rows)
        report["interrupted"] = interrupted
        return report

    on_row(report_so_far(True))
    try:
        hf_model, hf_note = _hf_copy(engine, hf)
        release(engine)
        del engine

        def hf_row(name, fn):
            if hf_model is None:
                return RunResult(name, available=False, note=hf_note)
            try:
                return fn(hf_model, workload)
            except Exception as exc:  # a transformers release that differs: say so, keep the rest
                return _failed(name, exc)

        def ours_row(name, policy="fcfs", **setting):
            try:
                result, engine = run_ours(workload, policy, device, dtype, attention, budget, name=name, **setting)
            except Exception as exc:  # a piece that fails on this machine: say so, keep the rows measured
                result = _failed(name, exc)
            else:
                release(engine)
                return result
            free_memory(dev)  # out of the except block: its traceback no longer holds the engine
            return result

        # Run order puts what the goal is measured against first (HF's continuous batching) and the
        # ablations last, so a run cut short by a time limit still has the rows that matter most.
        steps = [(CB_NAME, lambda: hf_row(CB_NAME, run_hf_generate_batch)),
                 ("ours static", lambda: ours_row("ours static", "static")),
                 (STATIC_NAME, lambda: hf_row(STATIC_NAME, run_hf_static))]
        steps += [(name, lambda name=name, setting=setting: ours_row(name, **setting))
                  for name, setting in ablations]
        for name, run in steps:
            running = name
            progress(name)
            with frozen_heap():
                results[name] = run()
            running = None
            on_row(report_so_far(True))
            progress(_line(results[name], ours))
            if name == STATIC_NAME:
                hf_model = None  # done with the Hugging Face copy: free it before the ablations
                free_memory(dev)
        interrupted = False
    except KeyboardInterrupt:  # report what was measured, and say what was not
        interrupted = True
    return report_so_far(interrupted)


def _hf_copy(engine, hf: bool):
    """Our weights in a transformers LlamaForCausalLM, or None and why not."""
    if not hf:
        return None, "skipped (--no-hf)"
    from .hf_systems import transformers_version

    if transformers_version() is None:
        return None, "transformers is not installed (pip install 'cbtui[bench]')"
    from engine.hf_weights import to_hf_llama

    try:
        return to_hf_llama(engine.runner.model, attn_implementation="sdpa"), ""
    except Exception as exc:  # a transformers release that differs: its rows say why, ours go on
        return None, _failure_note(exc)


def _failure_note(exc: Exception) -> str:
    return f"failed: {type(exc).__name__}: {exc}"[:300]


def _failed(name: str, exc: Exception) -> RunResult:
    return RunResult(name, available=False, note=_failure_note(exc))


def _measures_gpu_pieces(dev: torch.device) -> bool:
    """Ablation rows measure pieces of the CUDA fast path: a CPU run has none to measure."""
    return dev.type == "cuda"


def ablation_rows(decode_path: list[str]) -> list[tuple[str, dict]]:
    """Rows that change one piece of ours continuous (the run header's decode path says which pieces
    ran), each measuring what that piece is worth."""
    out: list[tuple[str, dict]] = [("ours continuous, overlapped", dict(overlap_steps=True))]
    if "decode graphs" in decode_path:
        out.append(("ours continuous, no graphs", dict(decode_graphs="off")))
    if "triton decode" in decode_path:
        out.append(("ours continuous, gather decode", dict(decode_attention="gather")))
    return out


def _report(dev, workload, dtype, attention_name, budget, results) -> dict:
    base = results[0]
    return {"machine": machine_info(dev), "workload": workload.describe(), "dtype": dtype,
            "attention": attention_name, "max_tokens_per_step": budget,
            "systems": [r.summary(None if r is base else base) for r in results]}


def _line(result: RunResult, base: RunResult | None = None) -> str:
    if not result.available:
        return f"{result.system}: unavailable ({result.note})"
    ratio = "" if base is None else f", {result.output_tok_s / base.output_tok_s:.2f}x ours"
    steps = "-" if result.steps is None else result.steps
    return (f"{result.system}: {result.output_tok_s:,.0f} output tok/s, {steps} steps, "
            f"{result.wall_s:.2f} s{ratio}")
