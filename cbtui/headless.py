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
from collections.abc import Callable, Iterable, Iterator

from rich.console import Console
from rich.markup import escape

from engine.records import RunHeader, StepRecord
from engine.records.prefix_view import reuse_events
from engine.records.summary import RunTotals
from engine.records.text import visible

from .controller import SteppableEngine
from .event_lines import event_lines


def step_line(rec: StepRecord) -> str:
    drafts = rec.draft_tokens  # speculation: of the decode tokens, drafts verified (and accepted)
    spec = f" (drafts {drafts:>3}, {rec.accepted_tokens:>3} ok)" if drafts else ""
    line = (f"step {rec.step:>4} | decode {rec.decode_tokens:>4}{spec} prefill {rec.prefill_tokens:>4} "
            f"unused {rec.unused_tokens:>4} | running {rec.running:>3} waiting {rec.waiting:>3} "
            f"finished {rec.finished_total:>3}")
    if rec.shards:  # sharded: each shard's blocks in use, and what the shards sent each other
        used = " ".join(f"{s.blocks_used}/{s.num_blocks}" for s in rec.shards)
        sent = rec.comm.bytes if rec.comm is not None else 0
        line += f" | shard KV {used} | comm {sent / 1024:.1f} KiB"
    return line


class HeadlessRun:
    """Iterating runs the engine: prints a line per step (or a JSON record) and hands each record on,
    then prints the summary. Nothing keeps the records: `totals` and the observers see each once."""

    def __init__(self, engine: SteppableEngine, header: RunHeader, as_json: bool = False,
                 max_steps: int | None = None, console: Console | None = None,
                 observers: Iterable[Callable[[StepRecord], object]] = (), events: bool = False):
        """`events`: the step's events (event_lines.py) under each step line."""
        self.engine, self.header, self.as_json, self.max_steps = engine, header, as_json, max_steps
        self.events = events
        self.console = console or Console(highlight=False)
        self.observers = list(observers)
        self.totals = RunTotals()

    def __iter__(self) -> Iterator[StepRecord]:
        console, header = self.console, self.header
        if self.as_json:
            sys.stdout.write(json.dumps(header.to_dict()) + "\n")
        else:
            settings = (f"model={header.model} device={header.device} attention={header.attention} "
                        f"kv={header.kv_layout}" + (f" speculative={header.speculative}" if header.speculative else ""))
            console.print(f"[bold]{escape(visible(header.title))}[/bold]  {escape(visible(settings))}")
            about = "\n".join(t for t in (header.description, header.question and f"Question: {header.question}")
                              if t)
            if about:
                console.print(escape(visible(about, newlines=True)), style="dim")
        start = time.perf_counter()
        previous = None
        dropped = 0  # computed tokens preemptions threw away (to be recomputed)
        while self.engine.has_unfinished() and (self.max_steps is None or self.totals.steps < self.max_steps):
            rec = self.engine.step()
            if rec is None:  # an overlapped engine's first call: the record comes with the next one
                continue
            self.totals.observe(rec)
            for observe in self.observers:
                observe(rec)
            if self.as_json:
                sys.stdout.write(json.dumps(rec.to_dict()) + "\n")
            else:
                notes = f"  [{'; '.join(rec.annotations)}]" if rec.annotations else ""
                console.print(escape(step_line(rec) + visible(notes)), soft_wrap=True)
                for event in reuse_events(rec.kv.prefix, rec.kv.block_size):
                    console.print(f"           {event}", style="dim", soft_wrap=True)
                for error in rec.errors:
                    console.print(escape(visible(error, newlines=True)), style="bold red", soft_wrap=True)
                if self.events:
                    for line in event_lines(rec, previous):
                        console.print(escape(line), soft_wrap=True)
                    dropped += sum(p.tokens_dropped for p in rec.preemptions)
                    previous = rec  # kept only here: a plain run holds no record but the one in hand
            yield rec
        if not self.as_json:
            console.print(summary_line(self.totals, time.perf_counter() - start), soft_wrap=True)
            if self.events:
                console.print(f"preemptions: {self.totals.preemptions}, {dropped} computed tokens dropped "
                              "(recomputed when readmitted)", soft_wrap=True)

    def run(self) -> RunTotals:
        """Runs to the end (or max_steps) with nothing else consuming the records."""
        for _ in self:
            pass
        return self.totals


def summary_line(totals: RunTotals, elapsed: float) -> str:
    s = totals.summary()
    mean_ttft = "n/a" if s.ttft_mean is None else f"{s.ttft_mean:.1f}"
    rate = s.generated / elapsed if elapsed > 0 else 0.0
    return (f"summary: {s.steps} steps, {s.generated} tokens generated, {s.processed} tokens processed, "
            f"{rate:.1f} tok/s, mean TTFT {mean_ttft} steps")
