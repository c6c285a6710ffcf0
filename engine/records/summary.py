"""A run summarised from its StepRecords alone (steps, batch sizes, TTFT, latency, preemptions,
recompute, padding, KV), and a plain table of summaries: what a [compare] prints for its variants, and
what a recorded run summarises to the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .metrics import sla_met
from .text import visible
from .types import RequestView, StepRecord


@dataclass
class RunSummary:
    label: str
    settings: str  # the engine settings that differ between the rows
    complete: bool  # every request finished
    steps: int
    processed: int  # tokens fed through the model (prefill + decode, recompute included)
    generated: int
    recomputed: int  # tokens fed again after preemption
    mean_batch: float  # tokens per step with work
    peak_batch: int
    ttft_min: int | None  # steps from arrival to first token
    ttft_mean: float | None
    ttft_max: int | None
    latency_mean: float | None  # steps from arrival to the last token
    preemptions: int
    padding_slot_steps: int  # static policy: batch slots held by finished requests, summed over steps
    peak_kv_slots: int  # token slots the KV cache holds at its peak (paged: whole blocks)
    kv_bytes_peak: int  # bytes reserved for K/V at the peak (paged: the whole pool, from the start)
    ms_per_step: float  # measured engine time; the only figure that is not deterministic
    sla_deadlines: int = 0  # requests with a deadline_step
    sla_met: int = 0  # of them, finished by their deadline (the rest missed it or are not yet due)


def final_views(records: Iterable[StepRecord]) -> dict[int, RequestView]:
    """Each request's last view: a record holds only the requests alive in its step."""
    return {view.id: view for record in records for view in record.requests}


class RunTotals:
    """A run's summary kept as running totals, one record at a time: what a long run can afford
    (a few numbers per request, never the records)."""

    def __init__(self) -> None:
        self.views: dict[int, RequestView] = {}  # each request's last view
        self.finish_step: dict[int, int] = {}
        self.last: StepRecord | None = None
        self.steps = self.processed = self.busy_steps = self.busy_tokens = self.peak_batch = 0
        self.preemptions = self.padding_slot_steps = self.peak_kv_slots = self.kv_bytes_peak = 0
        self.wall_s = 0.0

    def observe(self, rec: StepRecord) -> None:
        self.last = rec
        self.steps += 1
        for view in rec.requests:
            self.views[view.id] = view
        for rid in rec.finished:
            self.finish_step[rid] = rec.step
        self.processed += rec.decode_tokens + rec.prefill_tokens
        if rec.items:
            self.busy_steps += 1
            self.busy_tokens += rec.num_query_tokens
            self.peak_batch = max(self.peak_batch, rec.num_query_tokens)
        self.preemptions += len(rec.preempted)
        self.padding_slot_steps += rec.padding_slots
        kv = rec.kv
        slots = kv.blocks_used * kv.block_size if kv.layout == "paged" else sum(kv.tokens.values())
        self.peak_kv_slots = max(self.peak_kv_slots, slots)
        self.kv_bytes_peak = max(self.kv_bytes_peak, kv.pool_bytes)
        self.wall_s += rec.wall_time_s

    def summary(self, label: str = "", settings: str = "") -> RunSummary:
        views = list(self.views.values())
        # A request that ran to the end fed its prompt and every generated token but the last.
        needed = sum(v.prompt_len + max(v.generated - 1, 0) for v in views)
        ttfts = [v.ttft_steps for v in views if v.ttft_steps is not None]
        latencies = [self.finish_step[v.id] - v.arrival_step for v in views if v.id in self.finish_step]
        last = self.last
        return RunSummary(
            label=label, settings=settings,
            complete=bool(views) and all(v.state == "finished" for v in views) and last is not None
            and not last.pending,
            steps=self.steps, processed=self.processed, generated=sum(v.generated for v in views),
            recomputed=self.processed - needed,
            mean_batch=self.busy_tokens / self.busy_steps if self.busy_steps else 0.0, peak_batch=self.peak_batch,
            ttft_min=min(ttfts, default=None), ttft_mean=sum(ttfts) / len(ttfts) if ttfts else None,
            ttft_max=max(ttfts, default=None),
            latency_mean=sum(latencies) / len(latencies) if latencies else None,
            preemptions=self.preemptions, padding_slot_steps=self.padding_slot_steps,
            peak_kv_slots=self.peak_kv_slots, kv_bytes_peak=self.kv_bytes_peak,
            ms_per_step=1000 * self.wall_s / self.steps if self.steps else 0.0,
            sla_deadlines=sum(v.deadline_step is not None for v in views),
            sla_met=sum(sla_met(v.deadline_step, self.finish_step.get(v.id), last.step if last else None) is True
                        for v in views),
        )


def summarize(records: Iterable[StepRecord], label: str = "", settings: str = "") -> RunSummary:
    totals = RunTotals()
    for rec in records:
        totals.observe(rec)
    return totals.summary(label, settings)


COLUMNS = (
    ("run", lambda r: r.label), ("settings", lambda r: r.settings), ("steps", lambda r: r.steps),
    ("tok/step", lambda r: f"{r.mean_batch:.1f}"), ("peak", lambda r: r.peak_batch),
    ("TTFT min/mean/max", lambda r: _ttft(r)),
    ("latency", lambda r: "n/a" if r.latency_mean is None else f"{r.latency_mean:.1f}"),
    ("preempt", lambda r: r.preemptions), ("recompute", lambda r: r.recomputed),
    ("padding", lambda r: r.padding_slot_steps), ("KV slots", lambda r: r.peak_kv_slots),
    ("KV KiB", lambda r: f"{r.kv_bytes_peak / 1024:.0f}"), ("ms/step", lambda r: f"{r.ms_per_step:.2f}"),
)


def _ttft(r: RunSummary) -> str:
    if r.ttft_mean is None:
        return "n/a"
    return f"{r.ttft_min}/{r.ttft_mean:.1f}/{r.ttft_max}"


SLA_COLUMN = ("SLA met", lambda r: f"{r.sla_met}/{r.sla_deadlines}")  # only when some request has a deadline


def format_table(rows: list[RunSummary]) -> list[str]:
    """Plain aligned text lines; steps, TTFT and latency are in scheduler steps. Labels and settings
    come from a scenario file's [compare] names: their control characters are shown (and measured)."""
    columns = COLUMNS + ((SLA_COLUMN,) if any(r.sla_deadlines for r in rows) else ())
    cells = [[name for name, _ in columns]] + [[visible(str(get(r))) for _, get in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    for r in rows:
        if not r.complete:
            lines.append(f"note: {visible(r.label)} stopped after {r.steps} steps with requests unfinished")
    return lines
