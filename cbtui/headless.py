"""Headless run: one compact line per step (or one JSON StepRecord per line), then a summary.

Everything printed comes from the run header and the StepRecords, as in the dashboard. A JSON
stream starts with the header line, so a replay shows the run's title and settings. Text from a
scenario file or a plugin is shown with its control characters made visible (`visible`) and its
rich markup escaped; JSON escapes control characters itself.
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.markup import escape

from engine.records import RunHeader, StepRecord
from engine.records.summary import final_views
from engine.records.text import visible

from .controller import SteppableEngine


def step_line(rec: StepRecord) -> str:
    return (f"step {rec.step:>4} | decode {rec.decode_tokens:>4} prefill {rec.prefill_tokens:>4} "
            f"unused {rec.unused_tokens:>4} | running {rec.running:>3} waiting {rec.waiting:>3} "
            f"finished {rec.finished_total:>3}")


def run_headless(engine: SteppableEngine, header: RunHeader, as_json: bool = False, max_steps: int | None = None,
                 console: Console | None = None) -> list[StepRecord]:
    console = console or Console(highlight=False)
    records: list[StepRecord] = []
    if as_json:
        sys.stdout.write(json.dumps(header.to_dict()) + "\n")
    else:
        settings = (f"model={header.model} device={header.device} attention={header.attention} "
                    f"kv={header.kv_layout}")
        console.print(f"[bold]{escape(visible(header.title))}[/bold]  {escape(visible(settings))}")
        about = "\n".join(t for t in (header.description, header.question and f"Question: {header.question}") if t)
        if about:
            console.print(escape(visible(about, newlines=True)), style="dim")
    start = time.perf_counter()
    while engine.has_unfinished() and (max_steps is None or len(records) < max_steps):
        rec = engine.step()
        if rec is None:  # an overlapped engine's first call: the record comes with the next one
            continue
        records.append(rec)
        if as_json:
            sys.stdout.write(json.dumps(rec.to_dict()) + "\n")
        else:
            notes = f"  [{'; '.join(rec.annotations)}]" if rec.annotations else ""
            console.print(escape(step_line(rec) + visible(notes)), soft_wrap=True)
            for error in rec.errors:
                console.print(escape(visible(error, newlines=True)), style="bold red", soft_wrap=True)
    elapsed = time.perf_counter() - start
    if not as_json:
        console.print(summary_line(records, elapsed), soft_wrap=True)
    return records


def summary_line(records: list[StepRecord], elapsed: float) -> str:
    generated = sum(len(rec.sampled) for rec in records)
    processed = sum(rec.decode_tokens + rec.prefill_tokens for rec in records)
    ttfts = [v.ttft_steps for v in final_views(records).values() if v.ttft_steps is not None]
    mean_ttft = f"{sum(ttfts) / len(ttfts):.1f}" if ttfts else "n/a"
    rate = generated / elapsed if elapsed > 0 else 0.0
    return (f"summary: {len(records)} steps, {generated} tokens generated, {processed} tokens processed, "
            f"{rate:.1f} tok/s, mean TTFT {mean_ttft} steps")
