"""Headless run: one compact line per step (or one JSON StepRecord per line), then a summary."""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.markup import escape

from engine import Engine, StepRecord


def step_line(rec: StepRecord) -> str:
    return (f"step {rec.step:>4} | decode {rec.decode_tokens:>4} prefill {rec.prefill_tokens:>4} "
            f"unused {rec.unused_tokens:>4} | running {rec.running:>3} waiting {rec.waiting:>3} "
            f"finished {rec.finished_total:>3}")


def run_headless(engine: Engine, title: str, description: str, as_json: bool = False,
                 max_steps: int | None = None, console: Console | None = None) -> list[StepRecord]:
    console = console or Console(highlight=False)
    records: list[StepRecord] = []
    if not as_json:
        console.print(f"[bold]{escape(title)}[/bold]  model={engine.config.model} device={engine.device.type} "
                      f"attention={engine.attention_name} kv={engine.config.kv_layout}")
        if description:
            console.print(escape(description), style="dim")
    start = time.perf_counter()
    while engine.has_unfinished() and (max_steps is None or len(records) < max_steps):
        rec = engine.step()
        records.append(rec)
        if as_json:
            sys.stdout.write(json.dumps(rec.to_dict()) + "\n")
        else:
            notes = f"  [{'; '.join(rec.annotations)}]" if rec.annotations else ""
            console.print(escape(step_line(rec) + notes), soft_wrap=True)
            for error in rec.errors:
                console.print(escape(error), style="bold red", soft_wrap=True)
    elapsed = time.perf_counter() - start
    if not as_json:
        console.print(summary_line(engine, records, elapsed), soft_wrap=True)
    return records


def summary_line(engine: Engine, records: list[StepRecord], elapsed: float) -> str:
    generated = sum(len(r.output) for r in engine.requests.values())
    processed = sum(rec.decode_tokens + rec.prefill_tokens for rec in records)
    ttfts = [r.first_token_step - r.arrival_step for r in engine.requests.values()
             if r.first_token_step is not None]
    mean_ttft = f"{sum(ttfts) / len(ttfts):.1f}" if ttfts else "n/a"
    rate = generated / elapsed if elapsed > 0 else 0.0
    return (f"summary: {len(records)} steps, {generated} tokens generated, {processed} tokens processed, "
            f"{rate:.1f} tok/s, mean TTFT {mean_ttft} steps")
