"""A step's events in words, derived from its StepRecord: what the event line narrates, what a
breakpoint fires on, what `--events` prints.

Each kind of event is one function of (record, previous record or None) in `EVENT_KINDS`; a new
mechanism (speculation, prefix sharing) adds its function there and its records' fields, and the
dashboard, the headless printer and the breakpoints pick it up. Plain data, no torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .types import (
    REASON_BUDGET,
    REASON_DECODE_CAP,
    REASON_NO_BLOCKS,
    REASON_NO_KV_MEMORY,
    REASON_NO_RUN,
    REASON_RESERVED,
    REASON_STATIC_BATCH,
    RequestView,
    StepRecord,
)

# Event kinds (what a breakpoint names): keep these strings stable, recordings and lessons use them.
PREEMPTED = "preempted"
ADMITTED = "admitted"
RECOMPUTE = "recompute"  # a preempted request admitted again: it feeds its whole sequence anew
FIRST_TOKEN = "first token"
FINISHED = "finished"
ABORTED = "aborted"
CHANGED = "changed"
WAITING = "waiting"  # requests left out of the step, counted by reason
PADDING = "padding"  # a static batch's slots held by finished members
PLUGIN_ERROR = "plugin error"
NOTE = "note"  # a plugin's note on the step ("8 tokens reserved for 1 high-priority")
REUSED = "reused"  # an admission took KV blocks of a cached prefix (prefix caching)
DRAFTS = "drafts"  # a speculating decode verified drafts (speculative decoding)


@dataclass(frozen=True, slots=True)
class Event:
    step: int
    kind: str
    text: str  # "request 3 preempted (needs 5 blocks, 3 free; 33 tokens to recompute)"
    request_id: int | None = None

    def line(self) -> str:
        return f"step {self.step}: {self.text}"


EventKind = Callable[[StepRecord, "StepRecord | None"], Iterable[Event]]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def preempted(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    """Who was preempted, for whom, and how short the pool was (older recordings say only who)."""
    explained = set()
    for p in record.preemptions:
        explained.add(p.request_id)
        who = "needs" if p.for_request == p.request_id else f"request {p.for_request} needs"
        text = (f"request {p.request_id} preempted ({who} {_plural(p.blocks_needed, 'block')}, "
                f"{p.blocks_free} free; {_plural(p.tokens_dropped, 'token')} to recompute)")
        yield Event(record.step, PREEMPTED, text, p.request_id)
    for rid in record.preempted:
        if rid not in explained:
            yield Event(record.step, PREEMPTED, f"request {rid} preempted (no free KV blocks)", rid)


def admitted(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    """A prefill chunk from position 0 (or from the end of a prefix cache hit) is an admission; for a
    request preempted before, a recompute."""
    views = _views_by_id(record)
    hits = record.kv.prefix.hits if record.kv.prefix is not None else {}
    for item in record.items:
        if item.kind != "prefill" or item.first_pos != hits.get(str(item.request_id), 0):
            continue
        view = views.get(item.request_id)
        if view is not None and view.num_preemptions:
            generated = view.generated - (str(view.id) in record.sampled)  # before this step's token
            total = view.prompt_len + generated
            text = (f"request {view.id} admitted again after {_plural(view.num_preemptions, 'preemption')}: "
                    f"recomputes {total} tokens ({view.prompt_len} prompt + {generated} generated)")
            yield Event(record.step, RECOMPUTE, text, view.id)
        else:
            prompt = f" (prompt {view.prompt_len} tokens, first chunk {item.num_tokens})" if view else ""
            run = _run(record, item.request_id)
            yield Event(record.step, ADMITTED, f"request {item.request_id} admitted{prompt}{run}", item.request_id)


def _run(record: StepRecord, request_id: int) -> str:
    """For a request given a contiguous run: which blocks it reserved."""
    kv = record.kv
    if request_id not in kv.runs:
        return ""
    table = kv.block_tables.get(str(request_id), ())
    if not table:
        return ""
    return f", run of blocks {table[0]}–{table[-1]} reserved ({len(table) * kv.block_size} tokens)"


def first_token(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    for view in record.requests:
        if view.generated == 1 and str(view.id) in record.sampled and view.ttft_steps is not None:
            text = f"request {view.id} sampled its first token (TTFT {_plural(view.ttft_steps, 'step')})"
            yield Event(record.step, FIRST_TOKEN, text, view.id)


def _ended(record: StepRecord, ids: list[int], kind: str) -> Iterable[Event]:
    """Requests that left in this step (finished or aborted): their tokens and the blocks they freed."""
    views = _views_by_id(record)
    for rid in ids:
        view = views.get(rid)
        tokens = f" after {_plural(view.generated, 'token')}" if view else ""
        blocks = record.kv.freed_blocks.get(str(rid)) if record.kv.layout == "paged" else None
        freed = f", {_plural(len(blocks), 'block')} freed" if blocks is not None else ""
        yield Event(record.step, kind, f"request {rid} {kind}{tokens}{freed}", rid)


def finished(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    return _ended(record, record.finished, FINISHED)


def aborted(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    return _ended(record, record.aborted, ABORTED)


def changed(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    for change in record.changes:
        yield Event(record.step, CHANGED, f"{change} from step {record.step}")


def padding(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    if record.padding_slots:
        text = (f"static batch: {_plural(record.padding_slots, 'slot')} held by finished requests (padding) "
                f"until its longest member ends")
        yield Event(record.step, PADDING, text)


# Reasons a request waits that say something about the step (not "not arrived yet", and
# "preempted", which has its own event), in the order they are told.
_WAIT_REASONS = {
    REASON_DECODE_CAP: "decode cap {cap} left {n} waiting",
    REASON_BUDGET: "token budget spent: {n} waiting",
    REASON_RESERVED: "budget reserved for priority: {n} waiting",
    REASON_NO_BLOCKS: "no free KV blocks{short}: {n} waiting",
    REASON_NO_RUN: "no contiguous run free{short}: {n} waiting",
    REASON_NO_KV_MEMORY: "no free KV memory (the dense layout's cap): {n} waiting",
    REASON_STATIC_BATCH: "static batch full: {n} waiting",
}


def waiting(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    counts = Counter(view.reason for view in record.requests if view.reason in _WAIT_REASONS)
    for reason, template in _WAIT_REASONS.items():
        if counts[reason]:
            text = template.format(n=counts[reason], cap=record.decode_cap, short=_shortfall(record))
            yield Event(record.step, WAITING, text)


def _shortfall(record: StepRecord) -> str:
    b = record.admission_blocked
    if b is None:  # an older recording
        return ""
    if b.longest_run is not None:  # a contiguous run: enough free blocks may not be enough in a row
        return (f" (request {b.request_id} needs {_plural(b.blocks_needed, 'block')} in a row; {b.blocks_free} free, "
                f"longest run {b.longest_run})")
    return f" (request {b.request_id} needs {_plural(b.blocks_needed, 'block')}, {b.blocks_free} free)"


def reused(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    """Admissions that shared the KV blocks of a cached prefix instead of computing them."""
    prefix = record.kv.prefix
    if prefix is None:
        return
    for key, tokens in sorted(prefix.hits.items(), key=lambda kv: int(kv[0])):
        blocks = tokens // record.kv.block_size
        text = (f"request {key} reused {_plural(blocks, 'block')} ({_plural(tokens, 'token')}) "
                "from the prefix cache")
        yield Event(record.step, REUSED, text, int(key))


def drafts(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    """Each speculating decode: how many of its drafts the target accepted."""
    for item in record.items:
        if item.drafts:
            text = f"request {item.request_id}: {item.accepted} of {_plural(item.drafts, 'draft')} accepted"
            yield Event(record.step, DRAFTS, text, item.request_id)


def plugin_errors(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    for error in record.errors:
        yield Event(record.step, PLUGIN_ERROR, error)


def plugin_notes(record: StepRecord, previous: StepRecord | None) -> Iterable[Event]:
    for note in record.annotations:
        yield Event(record.step, NOTE, note)


EVENT_KINDS: tuple[EventKind, ...] = (changed, aborted, preempted, admitted, reused, first_token, drafts, finished,
                                      padding, waiting, plugin_errors, plugin_notes)


def step_events(record: StepRecord, previous: StepRecord | None = None) -> list[Event]:
    """The step's events, in the order they are told; `previous` is the step before, when known."""
    return [event for kind in EVENT_KINDS for event in kind(record, previous)]


def _views_by_id(record: StepRecord) -> dict[int, RequestView]:
    return {view.id: view for view in record.requests}
