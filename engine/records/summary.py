"""A run summarised from its StepRecords alone (steps, batch sizes, TTFT, latency, preemptions,
recompute, padding, KV), and a plain table of summaries: what a [compare] prints for its variants, and
what a recorded run summarises to the same way."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

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


def final_views(records: Iterable[StepRecord]) -> dict[int, RequestView]:
    """Each request's last view: a record holds only the requests alive in its step."""
    return {view.id: view for record in records for view in record.requests}


def summarize(records: list[StepRecord], label: str = "", settings: str = "") -> RunSummary:
    last = records[-1] if records else None
    views = list(final_views(records).values())
    finish_step = {rid: rec.step for rec in records for rid in rec.finished}
    processed = sum(rec.decode_tokens + rec.prefill_tokens for rec in records)
    # A request that ran to the end fed its prompt and every generated token but the last.
    needed = sum(v.prompt_len + max(v.generated - 1, 0) for v in views)
    ttfts = [v.ttft_steps for v in views if v.ttft_steps is not None]
    latencies = [finish_step[v.id] - v.arrival_step for v in views if v.id in finish_step]
    busy = [rec.num_query_tokens for rec in records if rec.items]

    def kv_slots(rec: StepRecord) -> int:
        if rec.kv.layout == "paged":
            return rec.kv.blocks_used * rec.kv.block_size
        return sum(rec.kv.tokens.values())

    return RunSummary(
        label=label, settings=settings,
        complete=bool(views) and all(v.state == "finished" for v in views) and last is not None and not last.pending,
        steps=len(records), processed=processed, generated=sum(v.generated for v in views),
        recomputed=processed - needed,
        mean_batch=sum(busy) / len(busy) if busy else 0.0, peak_batch=max(busy, default=0),
        ttft_min=min(ttfts, default=None), ttft_mean=sum(ttfts) / len(ttfts) if ttfts else None,
        ttft_max=max(ttfts, default=None),
        latency_mean=sum(latencies) / len(latencies) if latencies else None,
        preemptions=sum(len(rec.preempted) for rec in records),
        padding_slot_steps=sum(rec.padding_slots for rec in records),
        peak_kv_slots=max((kv_slots(rec) for rec in records), default=0),
        kv_bytes_peak=max((rec.kv.pool_bytes for rec in records), default=0),
        ms_per_step=1000 * sum(rec.wall_time_s for rec in records) / len(records) if records else 0.0,
    )


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


def format_table(rows: list[RunSummary]) -> list[str]:
    """Plain aligned text lines; steps, TTFT and latency are in scheduler steps. Labels and settings
    come from a scenario file's [compare] names: their control characters are shown (and measured)."""
    cells = [[name for name, _ in COLUMNS]] + [[visible(str(get(r))) for _, get in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    for r in rows:
        if not r.complete:
            lines.append(f"note: {visible(r.label)} stopped after {r.steps} steps with requests unfinished")
    return lines
