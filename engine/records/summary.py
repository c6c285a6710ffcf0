"""A run summarised from its StepRecords alone (steps, batch sizes, TTFT, latency, preemptions,
recompute, padding, KV), and a plain table of summaries: what a [compare] prints for its variants, and
what a recorded run summarises to the same way."""

from __future__ import annotations

import zlib
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
    prefill: int  # prefill tokens fed through the model (recompute included)
    cached: int  # prompt tokens taken from the prefix cache instead of computed
    outputs: str  # a checksum of every generated token in request order: equal outputs, equal checksums
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
    drafts_proposed: int = 0  # speculative decoding: drafts verified
    drafts_accepted: int = 0
    shards: int = 1  # processes the KV was sharded over
    shard_kv_bytes: int = 0  # the largest one shard's KV pool took (sharded runs)
    comm_bytes: int = 0  # bytes the shards exchanged over the run (plans, all-reduces, all-gathers)
    comm_s: float = 0.0  # rank 0's time inside collectives over the run (not deterministic)
    sla_deadlines: int = 0  # requests with a deadline_step
    sla_met: int = 0  # of them, finished by their deadline (the rest missed it or are not yet due)
    # Contiguous runs (contiguous_up_to): requests that held one; KV slots held but holding no token,
    # summed over steps (a run's unwritten tail, a block's unused end); steps the head of the queue
    # waited for a run although that many blocks were free (fragmentation)
    runs: int = 0
    held_empty: int = 0
    run_waits: int = 0


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
        self.prefill = self.cached = 0
        self.checksums: dict[int, int] = {}  # request id -> crc32 of its tokens so far
        self.steps = self.processed = self.busy_steps = self.busy_tokens = self.peak_batch = 0
        self.preemptions = self.padding_slot_steps = self.peak_kv_slots = self.kv_bytes_peak = 0
        self.wall_s = 0.0
        self.drafts_proposed = self.drafts_accepted = 0
        self.shards = 1
        self.shard_kv_bytes = self.comm_bytes = 0
        self.comm_s = 0.0
        self.run_ids: set[int] = set()
        self.held_empty = self.run_waits = 0

    def observe(self, rec: StepRecord) -> None:
        self.last = rec
        self.steps += 1
        for view in rec.requests:
            self.views[view.id] = view
        for rid in rec.finished:
            self.finish_step[rid] = rec.step
        self.processed += rec.decode_tokens + rec.prefill_tokens
        if rec.decode_tokens:  # speculation: drafts, of decode_tokens, and the accepted ones
            self.drafts_proposed += rec.draft_tokens
            self.drafts_accepted += rec.accepted_tokens
        self.prefill += rec.prefill_tokens
        if rec.kv.prefix is not None:
            self.cached += rec.kv.prefix.hit_tokens
        sums, kept = self.checksums, rec.kept_drafts
        for key, token in rec.sampled.items():
            rid = int(key)
            total = sums.get(rid, 0)
            for draft in kept.get(key, ()):  # accepted drafts come out before the sampled token
                total = zlib.crc32(draft.to_bytes(8, "little", signed=True), total)
            sums[rid] = zlib.crc32(token.to_bytes(8, "little", signed=True), total)
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
        if kv.layout == "paged" and kv.prefix is None and not kv.evicted:  # else a block's tokens count twice
            self.held_empty += slots - sum(kv.tokens.values())
        if kv.runs:
            self.run_ids.update(kv.runs)
        blocked = rec.admission_blocked
        if blocked is not None and blocked.longest_run is not None and blocked.blocks_free >= blocked.blocks_needed:
            self.run_waits += 1
        self.wall_s += rec.wall_time_s
        if rec.shards:
            self.shards = len(rec.shards)
            self.shard_kv_bytes = max(self.shard_kv_bytes, *(s.pool_bytes for s in rec.shards))
        if rec.comm is not None:
            self.comm_bytes += rec.comm.bytes
            self.comm_s += rec.comm.seconds

    def summary(self, label: str = "", settings: str = "") -> RunSummary:
        views = list(self.views.values())
        # A request that ran to the end fed its prompt and every generated token but the last, less
        # what the prefix cache handed it; a rejected draft was fed too, but is not recompute.
        needed = sum(v.prompt_len + max(v.generated - 1, 0) for v in views) - self.cached
        rejected = self.drafts_proposed - self.drafts_accepted
        outputs = 0
        for rid in sorted(self.checksums):
            outputs = zlib.crc32(self.checksums[rid].to_bytes(4, "little"), zlib.crc32(rid.to_bytes(8, "little"),
                                                                                      outputs))
        ttfts = [v.ttft_steps for v in views if v.ttft_steps is not None]
        latencies = [self.finish_step[v.id] - v.arrival_step for v in views if v.id in self.finish_step]
        last = self.last
        return RunSummary(
            label=label, settings=settings,
            complete=bool(views) and all(v.state in ("finished", "aborted") for v in views) and last is not None
            and not last.pending,
            steps=self.steps, processed=self.processed, generated=sum(v.generated for v in views),
            prefill=self.prefill, cached=self.cached, outputs=f"{outputs:08x}",
            recomputed=self.processed - rejected - needed,
            mean_batch=self.busy_tokens / self.busy_steps if self.busy_steps else 0.0, peak_batch=self.peak_batch,
            ttft_min=min(ttfts, default=None), ttft_mean=sum(ttfts) / len(ttfts) if ttfts else None,
            ttft_max=max(ttfts, default=None),
            latency_mean=sum(latencies) / len(latencies) if latencies else None,
            preemptions=self.preemptions, padding_slot_steps=self.padding_slot_steps,
            peak_kv_slots=self.peak_kv_slots, kv_bytes_peak=self.kv_bytes_peak,
            ms_per_step=1000 * self.wall_s / self.steps if self.steps else 0.0,
            drafts_proposed=self.drafts_proposed, drafts_accepted=self.drafts_accepted,
            shards=self.shards, shard_kv_bytes=self.shard_kv_bytes or self.kv_bytes_peak, comm_bytes=self.comm_bytes,
            comm_s=self.comm_s,
            sla_deadlines=sum(v.deadline_step is not None for v in views),
            sla_met=sum(sla_met(v.deadline_step, self.finish_step.get(v.id), last.step if last else None) is True
                        for v in views),
            runs=len(self.run_ids), held_empty=self.held_empty, run_waits=self.run_waits,
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
    ("prefill", lambda r: r.prefill), ("cached", lambda r: r.cached),
    ("preempt", lambda r: r.preemptions), ("recompute", lambda r: r.recomputed),
    ("padding", lambda r: r.padding_slot_steps), ("KV slots", lambda r: r.peak_kv_slots),
    ("KV KiB", lambda r: f"{r.kv_bytes_peak / 1024:.0f}"), ("outputs", lambda r: r.outputs),
    ("ms/step", lambda r: f"{r.ms_per_step:.2f}"),
)


# Shown only when some row speculated: accepted/proposed drafts.
DRAFTS_COLUMN = ("drafts ok", lambda r: f"{r.drafts_accepted}/{r.drafts_proposed}" if r.drafts_proposed else "-")
# Shown when some row ran sharded: what one device held, and what the shards sent each other.
SHARD_COLUMNS = (
    ("shards", lambda r: r.shards), ("KV KiB/shard", lambda r: f"{r.shard_kv_bytes / 1024:.0f}"),
    ("comm KiB", lambda r: f"{r.comm_bytes / 1024:.0f}"), ("comm ms", lambda r: f"{1000 * r.comm_s:.0f}"),
)


def _ttft(r: RunSummary) -> str:
    if r.ttft_mean is None:
        return "n/a"
    return f"{r.ttft_min}/{r.ttft_mean:.1f}/{r.ttft_max}"


SLA_COLUMN = ("SLA met", lambda r: f"{r.sla_met}/{r.sla_deadlines}")  # only when some request has a deadline
# Shown when some row gave requests contiguous runs: how many, the slots they held empty, the waits
# that fragmentation caused.
RUN_COLUMNS = (
    ("runs", lambda r: r.runs), ("held empty", lambda r: r.held_empty), ("run waits", lambda r: r.run_waits),
)


def format_table(rows: list[RunSummary], width: int | None = None) -> list[str]:
    """Plain aligned text lines; steps, TTFT and latency are in scheduler steps. Labels and settings
    come from a scenario file's [compare] names: their control characters are shown (and measured).
    With `width`, columns that do not fit go to a further table below (each starting with the run's
    name, a blank line between), so a terminal of that width never wraps a row mid-way."""
    columns = (COLUMNS + ((SLA_COLUMN,) if any(r.sla_deadlines for r in rows) else ())
               + ((DRAFTS_COLUMN,) if any(r.drafts_proposed for r in rows) else ())
               + (SHARD_COLUMNS if any(r.shards > 1 for r in rows) else ())
               + (RUN_COLUMNS if any(r.runs for r in rows) else ()))
    cells = [[name for name, _ in columns]] + [[visible(str(get(r))) for _, get in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    groups: list[list[int]] = [[0]]
    for i in range(1, len(columns)):
        used = sum(widths[j] + 2 for j in groups[-1]) - 2
        if width is not None and len(groups[-1]) > 1 and used + 2 + widths[i] > width:
            groups.append([0])
        groups[-1].append(i)
    lines = []
    for n, group in enumerate(groups):
        if n:
            lines.append("")
        lines += ["  ".join(row[i].ljust(widths[i]) if i < 2 else row[i].rjust(widths[i]) for i in group).rstrip()
                  for row in cells]
    for r in rows:
        if not r.complete:
            lines.append(f"note: {visible(r.label)} stopped after {r.steps} steps with requests unfinished")
    return lines
