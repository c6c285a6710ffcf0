"""Where a step's time goes: ours continuous on the chat workload, timed by part.

Timing hooks (perf_counter around each part; CPU ops run synchronously, so a part's wall time is
its own) on the projections of every layer, the attention adapters, the output head, the model's
whole forward and the runner's sampling; the rest of a step is the host's (scheduling, the batch,
KV bookkeeping, the StepRecord). The hooks cost a few microseconds each, about 1 ms a step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from engine import Engine
from engine.runner import model_runner

from .ours import _drive, _submit, engine_config
from .real import chat_workload
from .run import CPU_BUDGET
from .workloads import warmup_workload

PARTS = ("linear layers", "attention", "other layer ops", "lm head", "sampling", "host")
KINDS = ("prefill", "decode")


class PartClock:
    """Seconds per part of the current step, added into per-kind totals when the step ends."""

    def __init__(self) -> None:
        self.step: dict[str, float] = dict.fromkeys((*PARTS, "forward"), 0.0)
        self.totals: dict[str, dict[str, float]] = {kind: dict.fromkeys((*PARTS, "step"), 0.0) for kind in KINDS}
        self.steps = dict.fromkeys(KINDS, 0)
        self.tokens = dict.fromkeys(KINDS, 0)

    def timed(self, part: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.step[part] += time.perf_counter() - t
        return wrapper

    def hook(self, module: torch.nn.Module, part: str) -> None:
        started: list[float] = []
        module.register_forward_pre_hook(lambda m, args: started.append(time.perf_counter()))

        def done(m, args, out):
            self.step[part] += time.perf_counter() - started.pop()
        module.register_forward_hook(done)

    def end_step(self, kind: str, seconds: float, tokens: int) -> None:
        s, totals = self.step, self.totals[kind]
        inside = s["linear layers"] + s["attention"] + s["lm head"]
        parts = {"linear layers": s["linear layers"], "attention": s["attention"], "lm head": s["lm head"],
                 "other layer ops": s["forward"] - inside, "sampling": s["sampling"],
                 "host": seconds - s["forward"] - s["sampling"]}
        for part, value in parts.items():
            totals[part] += value
        totals["step"] += seconds
        self.steps[kind] += 1
        self.tokens[kind] += tokens
        self.step = dict.fromkeys(self.step, 0.0)


def instrument(engine: Engine, clock: PartClock) -> Callable[[], None]:
    """Installs the clock's hooks on the engine's model and runner; returns what undoes the
    module-level patches (sampling)."""
    runner = engine.runner
    model = runner.model
    for layer in model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                clock.hook(module, "linear layers")
    clock.hook(model.lm_head, "lm head")
    clock.hook(model, "forward")
    runner.layer_attention = [clock.timed("attention", fn) for fn in runner.layer_attention]
    saved = {name: getattr(model_runner, name) for name in ("greedy_batch", "sample_batch")}
    for name, fn in saved.items():
        setattr(model_runner, name, clock.timed("sampling", fn))

    def undo() -> None:
        for name, fn in saved.items():
            setattr(model_runner, name, fn)
    return undo


def run_breakdown(model: str, requests: tuple[int, ...], max_new_tokens: int, dtype: str, threads: int,
                  stop_at_eos: bool = False) -> list[dict]:
    """One run of ours continuous per request count, timed by part: per kind of step (with a
    prefill, decode only), the steps, tokens, and milliseconds per step of each part."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = []
    try:
        for n in requests:
            workload = chat_workload(model, n, max_new_tokens, stop_at_eos)
            engine = Engine(engine_config(workload, "fcfs", "cpu", dtype, "auto", CPU_BUDGET))
            _submit(engine, warmup_workload(model))
            _drive(engine)
            clock = PartClock()
            undo = instrument(engine, clock)
            try:
                _submit(engine, workload)
                while engine.has_unfinished():
                    t = time.perf_counter()
                    record = engine.step()
                    seconds = time.perf_counter() - t
                    if record is not None and record.items:
                        kind = "prefill" if record.prefill_tokens else "decode"
                        clock.end_step(kind, seconds, record.prefill_tokens + record.decode_tokens)
                    else:
                        clock.step = dict.fromkeys(clock.step, 0.0)
            finally:
                undo()
            out.append({"requests": n, "dtype": dtype, "steps": clock.steps, "tokens": clock.tokens,
                        "ms_per_step": {kind: {part: 1000 * v / max(clock.steps[kind], 1)
                                               for part, v in clock.totals[kind].items()} for kind in KINDS}})
    finally:
        torch.set_num_threads(before)
    return out


def breakdown_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="ours continuous, one run timed by part: milliseconds per step (share of the step)",
                  title_justify="left")
    for col in ("requests", "steps", "tokens/step", *PARTS, "step"):
        table.add_column(col, justify="right")
    for row in rows:
        for kind in KINDS:
            steps = row["steps"][kind]
            if not steps:
                continue
            ms = row["ms_per_step"][kind]
            cells = [f"{ms[p]:.1f} ({ms[p] / ms['step']:.0%})" for p in PARTS]
            table.add_row(f"{row['requests']} {kind}", str(steps), f"{row['tokens'][kind] / steps:.0f}", *cells,
                          f"{ms['step']:.1f}")
    table.caption = ("linear layers: every layer's projections; other layer ops: norms, rotary, residuals, KV "
                     "writes, embeddings; host: the step outside the model and sampling (schedule, batch, record)")
    table.caption_justify = "left"
    return table
