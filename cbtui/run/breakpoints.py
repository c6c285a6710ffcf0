"""Breakpoints: conditions on a step's record that pause the run on that step, as a debugger does.

`parse("preempt:3")` makes one from its spec; `Breakpoint.fires(record, previous)` says, from the
records alone, whether it fires in this step and on what ("request 3 preempted (needs 5 blocks, 3
free)"). `Breakpoints` is the set the engine thread checks after every step (the `b` key and
`--break-on` change it), so a run stops on the very step, however fast it goes, live or replayed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.records import StepRecord
from engine.records.events import (
    ABORTED,
    ADMITTED,
    CHANGED,
    DRAFTS,
    FINISHED,
    FIRST_TOKEN,
    PLUGIN_ERROR,
    PREEMPTED,
    RECOMPUTE,
    REUSED,
    step_events,
)

FORMS = ("preempt, preempt:N (request N), finish, finish:N, admit, admit:N, recompute, recompute:N, first, "
         "first:N (first token), reuse, reuse:N (a prefix cache hit), drafts, drafts:N (speculation), step:N, "
         "kv-free<K (free KV blocks fall below K), wait>K (a request queued more than K steps), fragmented (a "
         "contiguous run waits with enough blocks free, not in a row), error (a plugin's), abort, abort:N (a "
         "request stopped), change (a setting changed mid-run)")


class BreakpointError(ValueError):
    """A spec that names no breakpoint; the message says which forms there are."""


@dataclass(frozen=True)
class Breakpoint:
    spec: str  # as the user wrote it, normalised ("preempt:3")
    kind: str  # "preempt", "finish", "admit", "recompute", "first", "reuse", "drafts", "step", "kv-free", "wait",
    # "fragmented", "error"
    value: int | None = None  # the request, step or threshold; None: any

    def fires(self, record: StepRecord, previous: StepRecord | None = None) -> str | None:
        """What this breakpoint fires on in `record` (the step after `previous`), or None."""
        return _CONDITIONS[self.kind](self, record, previous)


def _on_events(*kinds: str) -> Callable[[Breakpoint, StepRecord, StepRecord | None], str | None]:
    def condition(bp: Breakpoint, record: StepRecord, previous: StepRecord | None) -> str | None:
        for event in step_events(record, previous):
            if event.kind in kinds and (bp.value is None or event.request_id == bp.value):
                return event.text
        return None
    return condition


def _at_step(bp: Breakpoint, record: StepRecord, previous: StepRecord | None) -> str | None:
    return f"step {record.step} reached" if record.step == bp.value else None


def _kv_free_below(bp: Breakpoint, record: StepRecord, previous: StepRecord | None) -> str | None:
    """Fires when the free blocks cross below K, not on every step they stay there."""
    assert bp.value is not None
    kv = record.kv
    if kv.layout != "paged" or kv.blocks_free >= bp.value:
        return None
    if previous is not None and previous.kv.blocks_free < bp.value:
        return None
    return f"{kv.blocks_free} free KV blocks of {kv.num_blocks} (below {bp.value})"


def _waits_over(bp: Breakpoint, record: StepRecord, previous: StepRecord | None) -> str | None:
    """A request still queued (waiting or preempted) K + 1 steps after it arrived: fires once for it."""
    assert bp.value is not None
    for view in record.requests:
        if view.state in ("waiting", "preempted") and record.step - view.arrival_step == bp.value + 1:
            return (f"request {view.id} has waited {bp.value + 1} steps since it arrived "
                    f"({view.reason or view.state})")
    return None


def _fragmented(bp: Breakpoint, record: StepRecord, previous: StepRecord | None) -> str | None:
    """The head of the queue waits for a contiguous run while enough blocks are free, only not in a row
    (contiguous_up_to): fires when that starts, not on every step it lasts."""
    def waits(rec: StepRecord | None):
        b = rec.admission_blocked if rec is not None else None
        return b if b is not None and b.longest_run is not None and b.blocks_free >= b.blocks_needed else None

    b = waits(record)
    if b is None or waits(previous) is not None:
        return None
    return (f"request {b.request_id} waits for {b.blocks_needed} blocks in a row: {b.blocks_free} free, longest run "
            f"{b.longest_run} (a fragmented pool)")


_CONDITIONS: dict[str, Callable[[Breakpoint, StepRecord, StepRecord | None], str | None]] = {
    "preempt": _on_events(PREEMPTED),
    "finish": _on_events(FINISHED),
    "admit": _on_events(ADMITTED, RECOMPUTE),  # a recompute is an admission too
    "recompute": _on_events(RECOMPUTE),  # admitted again after a preemption
    "first": _on_events(FIRST_TOKEN),
    "reuse": _on_events(REUSED),  # prefix caching: an admission shared cached blocks
    "drafts": _on_events(DRAFTS),  # speculative decoding: a decode verified drafts
    "error": _on_events(PLUGIN_ERROR),
    "abort": _on_events(ABORTED),  # a request stopped (Engine.abort)
    "change": _on_events(CHANGED),  # a setting changed mid-run (--at, reconfigure)
    "step": _at_step,
    "kv-free": _kv_free_below,
    "wait": _waits_over,
    "fragmented": _fragmented,
}
# alone: any request; with :N, request N
_OPTIONAL_REQUEST = ("preempt", "finish", "admit", "recompute", "first", "reuse", "drafts", "abort")
_SPEC = re.compile(r"^(?:(?P<kind>[a-z-]+)(?::(?P<arg>\d+))?|kv-free<(?P<free>\d+)|wait>(?P<wait>\d+))$")
_ALIASES = {"preemption": "preempt", "preempted": "preempt", "finished": "finish", "admission": "admit",
            "admitted": "admit", "errors": "error", "first-token": "first", "hit": "reuse", "draft": "drafts",
            "fragmentation": "fragmented", "no-run": "fragmented", "aborted": "abort", "changed": "change",
            "knob": "change"}


MAX_DIGITS = 18  # a step, request or threshold: an int64, as the records hold them
SHOWN_CHARS = 60  # of a bad spec, in its message


def _shown(spec: str) -> str:
    return repr(spec if len(spec) <= SHOWN_CHARS else spec[:SHOWN_CHARS] + "...")


def _number(spec: str, digits: str) -> int:
    """int(digits), refused in one line past MAX_DIGITS (int() itself refuses past 4,300)."""
    if len(digits.lstrip("0")) > MAX_DIGITS:
        raise BreakpointError(f"breakpoint {_shown(spec)}: its number has {len(digits)} digits; steps, requests "
                              f"and thresholds have at most {MAX_DIGITS}")
    return int(digits)


def parse(spec: str) -> Breakpoint:
    """A Breakpoint from its spec; BreakpointError names the spec and the accepted forms."""
    text = spec.strip().lower().replace(" ", "")
    match = _SPEC.match(text)
    if match is None:
        raise BreakpointError(f"breakpoint {_shown(spec)} is not one of: {FORMS}")
    if match["free"] is not None:
        free = _number(spec, match["free"])
        return Breakpoint(f"kv-free<{free}", "kv-free", free)
    if match["wait"] is not None:
        wait = _number(spec, match["wait"])
        return Breakpoint(f"wait>{wait}", "wait", wait)
    kind = _ALIASES.get(match["kind"], match["kind"])
    arg = None if match["arg"] is None else _number(spec, match["arg"])
    if kind == "step" and arg is not None:
        return Breakpoint(f"step:{arg}", kind, arg)
    if kind in _OPTIONAL_REQUEST or (kind in ("error", "fragmented", "change") and arg is None):
        return Breakpoint(kind if arg is None else f"{kind}:{arg}", kind, arg)
    raise BreakpointError(f"breakpoint {_shown(spec)} is not one of: {FORMS}")


class Breakpoints:
    """The run's breakpoints, checked on the engine thread after every step and changed from the UI
    (hence the lock). Remembers the last record it saw, for the conditions that compare two steps."""

    def __init__(self, breakpoints: Iterable[Breakpoint] = ()):
        self._lock = threading.Lock()
        self._items: list[Breakpoint] = []
        self._previous: StepRecord | None = None
        for bp in breakpoints:
            self.add(bp)

    def add(self, bp: Breakpoint) -> bool:
        """False when it was set already."""
        with self._lock:
            if bp in self._items:
                return False
            self._items.append(bp)
            return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def specs(self) -> list[str]:
        with self._lock:
            return [bp.spec for bp in self._items]

    def __bool__(self) -> bool:
        return bool(self.specs())

    def restart(self) -> None:
        """A new run (r, or a replay started over): no previous step."""
        self._previous = None

    def check(self, record: object) -> str | None:
        """'preempt hit: request 3 preempted (...)' for the first breakpoint that fires, else None.
        Only a StepRecord fires one: what else a controller hands over (cbtui compare's pair of
        records) is passed by, and is not the previous step of the next."""
        if not isinstance(record, StepRecord):
            return None
        with self._lock:
            items = list(self._items)
        previous, self._previous = self._previous, record
        for bp in items:
            hit = bp.fires(record, previous)
            if hit is not None:
                return f"{bp.spec} hit: {hit}"
        return None
