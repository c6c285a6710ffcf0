"""One benchmark run: every system, repeated in rotating order, in this process, on the same weights."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from engine.runner.model_runner import resolve_device

from ..run.frozen_heap import frozen_heap
from .machine import machine_info
from .metrics import RunResult
from .ours import free_memory, release, run_ours
from .workloads import REPETITIVE, Workload, make_workload

DEFAULT_CPU_SCALE = 1 / 16
DEFAULT_CPU_REPEAT, DEFAULT_CUDA_REPEAT = 3, 1  # repetitions of every system
INTERRUPTED = "interrupted while running (Ctrl-C or a time limit)"
NOT_RUN = "not run: the bench was interrupted before it"
CUDA_BUDGET, CPU_BUDGET = 8192, 2048  # max tokens per step of our engine
BASE = "ours continuous"  # what every row is compared with


def default_scale(device: torch.device) -> float:
    return 1.0 if device.type == "cuda" else DEFAULT_CPU_SCALE


def default_repeat(device: torch.device) -> int:
    return DEFAULT_CUDA_REPEAT if device.type == "cuda" else DEFAULT_CPU_REPEAT


def pins_one_thread(device: torch.device, model: str) -> bool:
    """As `cbtui scenario` runs the tiny model on the CPU: its ops are too small for threads to pay off."""
    return device.type == "cpu" and model == "tiny"


def run_bench(workload_name: str, scale: float | None = None, device: str = "auto", model: str | None = None,
              attention: str = "auto", hf: bool = True, ablations: bool = True, progress=lambda msg: None,
              on_row=lambda report: None, repeat: int | None = None, speculative: str | None = None) -> dict:
    """Runs the systems on a named workload; returns the report dict (what --json prints).

    speculative: 'ngram' or 'draft' adds a row of ours continuous with speculative decoding; None
    adds the ngram row on a workload made for it (repetitive); 'off' none."""
    dev = resolve_device(device)
    scale = default_scale(dev) if scale is None else scale
    model = model or ("small" if dev.type == "cuda" else "tiny")
    repeat = default_repeat(dev) if repeat is None else repeat
    workload = make_workload(workload_name, scale=scale, model=model)
    threads = torch.get_num_threads()
    if pins_one_thread(dev, model):
        torch.set_num_threads(1)
    try:
        return run_systems(workload, device, attention, hf, progress, ablations=ablations, on_row=on_row,
                           repeat=repeat, extra_rows=speculative_rows(workload_name, speculative))
    finally:
        torch.set_num_threads(threads)


def speculative_rows(workload_name: str, speculative: str | None) -> list[tuple[str, dict]]:
    """The speculative row beside ours continuous, when asked for or on a workload made for it."""
    proposer = speculative or ("ngram" if workload_name in REPETITIVE else "off")
    if proposer == "off":
        return []
    return [(f"ours continuous, speculative {proposer}", dict(speculative=proposer, num_speculative_tokens=4))]


def rotations(names: Sequence[str], repeat: int) -> list[list[str]]:
    """The run order of each repetition: the first as given, each next one rotated by one
    (A B C D, B C D A, C D A B, ...), so no system always runs first or right after another's
    leftovers (a warm cache, a heap to collect, a neighbour's load)."""
    n = len(names)
    return [[names[(rep + i) % n] for i in range(n)] for rep in range(repeat)]


def run_systems(workload: Workload, device: str = "auto", attention: str = "auto", hf: bool = True,
                progress=lambda msg: None, ablations: bool | Sequence[tuple[str, dict]] = True,
                on_row=lambda report: None, repeat: int = 1, extra_rows: Sequence[tuple[str, dict]] = (),
                dtype: str | None = None, generate_batch_settings: dict | None = None,
                generate_batch_skipped: str | None = None,
                other_systems: Sequence[tuple[str, Callable[[Workload], RunResult]]] = ()) -> dict:
    """Every system on one workload, `repeat` times, interleaved in rotating order (rotations()),
    on the same weights. A row's output tok/s is the median of its repetitions (min and max beside
    it); its ratio to ours continuous is paired: ours continuous over it within each repetition,
    the median of those.

    Interrupted (Ctrl-C, or SIGTERM from a time limit: bench_cli) after ours continuous' first
    repetition, it still returns the report: the systems measured (over the repetitions done), the
    one cut short and those not run, and report["interrupted"]. Interrupted before that,
    KeyboardInterrupt propagates: nothing to report.
    on_row gets the report so far after each system's run (the rest marked not run, "interrupted"
    true until the end), so a process killed outright still leaves what it measured (bench --out).
    ablations: True runs ablation_rows() on CUDA (a CPU run has no fast path to measure), False none,
    or a list of (name, engine setting) rows runs those, on any device (a setting may name another dtype).
    dtype: ours' and transformers' (default: bfloat16 on CUDA, float32 on the CPU).
    generate_batch_settings: run HF generate_batch with these (its page size, blocks, token budget)
    on any device; None: CUDA only, CB_SETTINGS. generate_batch_skipped: not run, for this reason.
    other_systems: (name, run(workload)) of systems outside ours and transformers (llama.cpp),
    repeated and rotated with the rest; one that raises is a row saying why."""
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be at least 1")
    dev = resolve_device(device)
    dtype = dtype or ("bfloat16" if dev.type == "cuda" else "float32")
    budget = CUDA_BUDGET if dev.type == "cuda" else CPU_BUDGET

    progress(f"{BASE}: {workload.num_requests} requests" + _of(0, repeat))
    with frozen_heap():
        ours, engine = run_ours(workload, "fcfs", device, dtype, attention, budget)
    progress(_line(ours))
    attention_name = engine.header().attention
    if isinstance(ablations, bool):
        rows = ablation_rows(engine.header().decode_path) if ablations and _measures_gpu_pieces(dev) else []
        # What prefix caching is worth, on any device, when the prompts share prefixes.
        ablations = (PREFIX_ROWS if workload.shared_prefixes else []) + rows
    ablations = [*extra_rows, *ablations]  # ours with one setting changed: speculation first

    from .hf_systems import CB_NAME, STATIC_NAME, generate_batch, run_hf_generate_batch, run_hf_static

    others = [name for name, _ in other_systems]
    order = [BASE, "ours static", CB_NAME, STATIC_NAME, *others] + [name for name, _ in ablations]
    # Run order puts what the goal is measured against first (HF's continuous batching) and the
    # ablations last, so a run cut short by a time limit still has the rows that matter most.
    schedule = rotations([BASE, CB_NAME, "ours static", STATIC_NAME, *others] + [name for name, _ in ablations], repeat)
    runs: dict[str, list[RunResult | None]] = {name: [None] * repeat for name in order}
    runs[BASE][0] = ours
    running = None  # the system being measured when an interrupt comes

    def report_so_far(interrupted: bool) -> dict:
        rows = [combine(name, runs, repeat, running) for name in order]
        report = _report(dev, workload, dtype, attention_name, budget, rows)
        report.update(repeat=repeat, schedule=schedule, interrupted=interrupted)
        return report

    on_row(report_so_far(True))
    hf_names = (CB_NAME, STATIC_NAME)
    todo = [(rep, name) for rep, names in enumerate(schedule) for name in names if (rep, name) != (0, BASE)]
    last_hf = max((i for i, (_, name) in enumerate(todo) if name in hf_names), default=-1)
    try:
        hf_model, hf_note = _hf_copy(engine, hf)
        release(engine)
        del engine

        def hf_row(name: str, fn: Callable[[Any, Workload], RunResult]) -> RunResult:
            if hf_model is None:
                return RunResult(name, available=False, note=hf_note)
            try:
                return fn(hf_model, workload)
            except Exception as exc:  # a transformers release that differs: say so, keep the rest
                return _failed(name, exc)

        def ours_row(name: str, policy: str = "fcfs", **setting: Any) -> RunResult:
            row_dtype = setting.pop("dtype", dtype)
            try:
                result, engine = run_ours(workload, policy, device, row_dtype, attention, budget, name=name, **setting)
            except Exception as exc:  # a piece that fails on this machine: say so, keep the rows measured
                result = _failed(name, exc)
            else:
                release(engine)
                return result
            free_memory(dev)  # out of the except block: its traceback no longer holds the engine
            return result

        def other_row(name: str, run: Callable[[Workload], RunResult]) -> RunResult:
            try:
                return run(workload)
            except Exception as exc:  # another project's release that differs: say so, keep the rest
                return _failed(name, exc)

        def hf_generate_batch(hf, workload: Workload) -> RunResult:
            if generate_batch_skipped:
                return RunResult(CB_NAME, available=False, note=generate_batch_skipped)
            if generate_batch_settings is None:
                return run_hf_generate_batch(hf, workload)
            return generate_batch(hf, workload, generate_batch_settings)

        systems: dict[str, Callable[[], RunResult]] = {
            CB_NAME: lambda: hf_row(CB_NAME, hf_generate_batch),
            "ours static": lambda: ours_row("ours static", "static"),
            STATIC_NAME: lambda: hf_row(STATIC_NAME, run_hf_static),
            BASE: lambda: ours_row(BASE)}
        systems.update({name: partial(ours_row, name, **setting) for name, setting in ablations})
        systems.update({name: partial(other_row, name, run) for name, run in other_systems})
        for i, (rep, name) in enumerate(todo):
            first = runs[name][0]
            if first is not None and not first.available:
                runs[name][rep] = first  # unavailable or failed once: not tried again
            else:
                running = name
                progress(name + _of(rep, repeat))
                with frozen_heap():
                    result = runs[name][rep] = systems[name]()
                running = None
                on_row(report_so_far(True))
                progress(_line(result, runs[BASE][rep]))
            if i == last_hf:
                hf_model = None  # done with the Hugging Face copy: free it before the rest
                free_memory(dev)
        interrupted = False
    except KeyboardInterrupt:  # report what was measured, and say what was not
        interrupted = True
    return report_so_far(interrupted)


def _of(rep: int, repeat: int) -> str:
    return f" (repetition {rep + 1} of {repeat})" if repeat > 1 else ""


def _tok_s(result: RunResult) -> tuple[float, float]:
    """Output and total tok/s of a run that ran (available: the bench timed it, so its wall time is > 0)."""
    output, total = result.output_tok_s, result.total_tok_s
    assert output is not None and total is not None, f"{result.system}: available but not timed"
    return output, total


def _median_run(results: list[RunResult]) -> RunResult:
    """The repetition whose output tok/s is the median (the lower of the middle two for an even count)."""
    ordered = sorted(results, key=lambda r: r.output_tok_s or 0.0)
    return ordered[(len(ordered) - 1) // 2]


def combine(name: str, runs: dict[str, list[RunResult | None]], repeat: int, running: str | None = None) -> dict:
    """One row of the report from a system's repetitions: the median repetition's figures (TTFT,
    TPOT, steps), output tok/s as the median, min and max of all, and ratios paired with ours
    continuous in the same repetition. Only the repetitions that ran count; the note says how many
    failed, and why the first did."""
    done = [r for r in runs[name] if r is not None]
    if not done:
        return RunResult(name, available=False, note=INTERRUPTED if name == running else NOT_RUN).summary()
    measured = [r for r in done if r.available]  # a repetition can fail after one that ran (out of memory)
    if not measured:
        return done[0].summary()
    tok_s = [_tok_s(r)[0] for r in measured]
    row = _median_run(measured).summary()
    row.update(output_tok_s=statistics.median(tok_s), output_tok_s_min=min(tok_s), output_tok_s_max=max(tok_s),
               output_tok_s_runs=tok_s, total_tok_s=statistics.median([_tok_s(r)[1] for r in measured]),
               repetitions=len(measured))
    if len(done) < repeat:
        row["note"] += f"; {len(done)} of {repeat} repetitions (the bench was interrupted)"
    if len(measured) < len(done):
        failed = next(r for r in done if not r.available)
        row["note"] += f"; {len(done) - len(measured)} of {len(done)} repetitions failed ({failed.note})"
    if name != BASE:
        pairs = [(base, r) for base, r in zip(runs[BASE], runs[name], strict=True)
                 if base is not None and r is not None and base.available and r.available]
        if pairs:
            rates = [(_tok_s(base), _tok_s(r)) for base, r in pairs]  # (ours, this): (output, total) tok/s
            row["ours_over_this_runs"] = [ours[0] / this[0] for ours, this in rates]
            row["ours_over_this"] = statistics.median(row["ours_over_this_runs"])
            row["output_tok_s_vs_ours"] = statistics.median([this[0] / ours[0] for ours, this in rates])
            row["total_tok_s_vs_ours"] = statistics.median([this[1] / ours[1] for ours, this in rates])
            same = [sum(a == b for a, b in zip(r.outputs, base.outputs, strict=False)) / len(base.outputs)
                    for base, r in pairs if base.outputs]
            row["same_outputs_as_ours"] = min(same) if same else None  # the worst repetition
    return row


def _hf_copy(engine, hf: bool):
    """Our weights in a transformers LlamaForCausalLM (a checkpoint: transformers' own load of it), or
    None and why not."""
    if not hf:
        return None, "skipped (--no-hf)"
    from .hf_systems import transformers_version

    if transformers_version() is None:
        return None, "transformers is not installed (pip install 'cbtui[bench]')"
    from engine.models.hf_weights import to_hf_llama
    from engine.models.source import is_preset

    try:
        if not is_preset(engine.config.llm.name):  # a checkpoint: transformers loads the same files
            return _hf_from_checkpoint(engine), ""
        return to_hf_llama(engine.runner.model, attn_implementation="sdpa"), ""
    except Exception as exc:  # a transformers release that differs: its rows say why, ours go on
        return None, _failure_note(exc)


def _hf_from_checkpoint(engine):
    """transformers' own model of the directory our engine loaded (nothing downloaded): a checkpoint
    directory, a Hub snapshot, or what a GGUF file (smollm2 too) was converted into; on our device and dtype."""
    from transformers import AutoModelForCausalLM

    from engine.models.source import resolve

    runner = engine.runner
    directory = resolve(engine.config.llm.name).directory
    assert directory is not None  # a preset's HF copy is made from our weights (to_hf_llama)
    # Never a checkpoint's own code, and never a prompt asking whether to run it (issue #30).
    try:
        hf = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=runner.dtype,
                                                  attn_implementation="sdpa", trust_remote_code=False
                                                  ).to(runner.device).eval()
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ValueError("transformers would have to run the checkpoint's own Python (its config names "
                         "custom code), which cbtui never does (trust_remote_code=False)") from None
    hf.generation_config.eos_token_id = None  # as ours: exactly max_new_tokens
    hf.generation_config.pad_token_id = 0
    return hf


def _failure_note(exc: Exception) -> str:
    return f"failed: {type(exc).__name__}: {exc}"[:300]


def _failed(name: str, exc: Exception) -> RunResult:
    return RunResult(name, available=False, note=_failure_note(exc))


def _measures_gpu_pieces(dev: torch.device) -> bool:
    """Ablation rows measure pieces of the CUDA fast path: a CPU run has none to measure."""
    return dev.type == "cuda"


PREFIX_ROWS: list[tuple[str, dict]] = [("ours continuous, no prefix caching", dict(prefix_caching=False))]


def ablation_rows(decode_path: list[str]) -> list[tuple[str, dict]]:
    """Rows that change one piece of ours continuous (the run header's decode path says which pieces
    ran), each measuring what that piece is worth."""
    out: list[tuple[str, dict]] = [("ours continuous, overlapped", dict(overlap_steps=True))]
    if "decode graphs" in decode_path:
        out.append(("ours continuous, no graphs", dict(decode_graphs="off")))
    if "triton decode" in decode_path or "cpp decode" in decode_path:
        out.append(("ours continuous, gather decode", dict(decode_attention="gather")))
    return out


def _report(dev, workload, dtype, attention_name, budget, rows: list[dict]) -> dict:
    machine = machine_info(dev)
    machine["torch_threads_pinned"] = pins_one_thread(dev, workload.model) and torch.get_num_threads() == 1
    return {"machine": machine, "workload": workload.describe(), "dtype": dtype,
            "attention": attention_name, "max_tokens_per_step": budget, "systems": rows}


def _line(result: RunResult, base: RunResult | None = None) -> str:
    if not result.available:
        return f"{result.system}: unavailable ({result.note})"
    tok_s = _tok_s(result)[0]
    ours = _tok_s(base)[0] if base is not None and base is not result and base.available else 0.0
    ratio = f", ours {ours / tok_s:.2f}x it" if ours else ""
    steps = "-" if result.steps is None else result.steps
    return (f"{result.system}: {tok_s:,.0f} output tok/s, {steps} steps, "
            f"{result.wall_s:.2f} s{ratio}")
