"""Headless run: one compact line per step (or one JSON StepRecord per line), then a summary.

Everything printed comes from the run header and the StepRecords, as in the dashboard. A JSON
stream starts with the header line, so a replay shows the run's title and settings. Text from a
scenario file or a plugin is shown with its control characters made visible (`visible`) and its
rich markup escaped; JSON escapes control characters itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator

from rich.console import Console
from rich.markup import escape

from engine.records import RunHeader, StepRecord
from engine.records.events import reused
from engine.records.summary import RunTotals
from engine.records.text import visible

from ..render.event_lines import event_lines
from .controller import SteppableEngine


def stdout_closed() -> None:
    """Whoever read stdout stopped (`cbtui scenario X --json | head -1`): end quietly, with 0, as
    Python's docs advise: stdout goes to devnull, so the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


class PipeConsole(Console):
    """Rich ends a closed pipe with exit 1; a reader that has seen enough is not an error."""

    def on_broken_pipe(self) -> None:
        stdout_closed()


LINE_WIDTH = 80  # a step line fits a standard terminal; longer plugin notes go on lines of their own


def step_line(rec: StepRecord) -> str:
    """76 columns up to 9,999 steps and tokens per step, 999 requests in each state; speculation and
    shards add a line of their own under it (indented as the figures are)."""
    line = (f"step {rec.step:>4} | decode {rec.decode_tokens:>4} prefill {rec.prefill_tokens:>4} "
            f"unused {rec.unused_tokens:>4} | run {rec.running:>3} wait {rec.waiting:>3} "
            f"done {rec.finished_total:>3}")
    more = []
    if rec.draft_tokens:  # speculation: of the decode tokens, drafts verified (and accepted)
        more.append(f"drafts {rec.draft_tokens}, {rec.accepted_tokens} accepted")
    if rec.shards:  # sharded: each shard's blocks in use, and what the shards sent each other
        used = " ".join(f"{s.blocks_used}/{s.num_blocks}" for s in rec.shards)
        sent = rec.comm.bytes if rec.comm is not None else 0
        more.append(f"shard KV {used}, comm {sent / 1024:.1f} KiB")
    return line + "".join(f"\n{' ' * 12}{part}" for part in more)


class HeadlessRun:
    """Iterating runs the engine: prints a line per step (or a JSON record) and hands each record on,
    then prints the summary. Nothing keeps the records: `totals` and the observers see each once."""

    def __init__(self, engine: SteppableEngine, header: RunHeader, as_json: bool = False,
                 max_steps: int | None = None, console: Console | None = None,
                 observers: Iterable[Callable[[StepRecord], object]] = (), events: bool = False):
        """`events`: the step's events (cbtui/render/event_lines.py) under each step line."""
        self.engine, self.header, self.as_json, self.max_steps = engine, header, as_json, max_steps
        self.events = events
        self.console = console or PipeConsole(highlight=False)
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
                line = step_line(rec)
                notes = f"[{'; '.join(rec.annotations)}]" if rec.annotations else ""
                last = line.rsplit("\n", 1)[-1]
                if notes and len(last) + 2 + len(visible(notes)) > LINE_WIDTH:
                    line += "\n" + " " * 5  # under the step number, not past the 80th column
                elif notes:
                    line += "  "
                console.print(escape(line + visible(notes)), soft_wrap=True)
                if not self.events:  # with --events the event lines say it
                    for event in reused(rec, None):
                        console.print(f"{' ' * 12}{escape(event.text)}", style="dim", soft_wrap=True)
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
