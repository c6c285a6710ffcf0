"""A run's StepRecords as a Chrome / Perfetto trace (open it at ui.perfetto.dev or chrome://tracing).

The time axis is the run's own: each step lasts its recorded wall time, one after another. Tracks:
- "scheduler": one slice per step (its token split in the args), with counters for the budget
  split, running / waiting requests and KV blocks in use.
- one track per request: its prefill chunks, its decode steps (consecutive ones merged), and the
  steps it waited, named by the reason the scheduler gave (token budget spent, decode cap, no free
  KV blocks, ...), again merged while the reason stays the same; marks where it was preempted,
  got its first token and finished.
So a gap in a request's decodes, and why, reads off one row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from .output_files import check_output_path, write_atomically
from .types import REASON_NOT_ARRIVED, StepRecord

SCHEDULER_PID, REQUESTS_PID = 1, 2


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


class _Segment(NamedTuple):
    label: str
    start: float  # seconds into the run
    end: float
    first_step: int
    last_step: int


class _RequestTrack:
    """One request's row: the open segment is extended by the next step or closed into a slice."""

    def __init__(self, rid: int):
        self.rid = rid
        self.events: list[dict[str, Any]] = []
        self.open: _Segment | None = None

    def close(self) -> None:
        if self.open is not None:
            seg = self.open
            self.events.append({"name": seg.label, "ph": "X", "ts": _us(seg.start),
                                "dur": _us(seg.end - seg.start), "pid": REQUESTS_PID, "tid": self.rid,
                                "args": {"steps": [seg.first_step, seg.last_step]}})
            self.open = None

    def segment(self, label: str, start: float, end: float, step: int, merge: bool) -> None:
        seg = self.open
        if merge and seg is not None and seg.label == label and seg.last_step == step - 1:
            self.open = seg._replace(end=end, last_step=step)
            return
        self.close()
        self.open = _Segment(label, start, end, step, step)

    def mark(self, name: str, ts: float) -> None:
        self.events.append({"name": name, "ph": "i", "s": "t", "ts": _us(ts), "pid": REQUESTS_PID, "tid": self.rid})


def trace_events(records: Iterable[StepRecord]) -> list[dict]:
    """Trace Event Format events for the records, in order (a whole run, or the first steps of one)."""
    return list(iter_trace_events(records))


def iter_trace_events(records: Iterable[StepRecord]) -> Iterator[dict]:
    """trace_events one by one, as the records come: a step's scheduler events as soon as it is
    read, the requests' rows (merged slices, far fewer than records) at the end. Records are not
    kept, so a long recording streams into its trace."""
    yield {"name": "process_name", "ph": "M", "pid": SCHEDULER_PID, "args": {"name": "scheduler"}}
    yield {"name": "process_name", "ph": "M", "pid": REQUESTS_PID, "args": {"name": "requests"}}
    yield {"name": "thread_name", "ph": "M", "pid": SCHEDULER_PID, "tid": 0, "args": {"name": "steps"}}
    tracks: dict[int, _RequestTrack] = {}
    got_first: set[int] = set()
    now = 0.0
    for record in records:
        events: list[dict[str, Any]] = []
        start, end = now, now + record.wall_time_s
        now = end
        events.append({"name": f"step {record.step}", "ph": "X", "ts": _us(start), "dur": _us(end - start),
                       "pid": SCHEDULER_PID, "tid": 0,
                       "args": {"decode_tokens": record.decode_tokens, "prefill_tokens": record.prefill_tokens,
                                "unused_tokens": record.unused_tokens, "budget": record.budget,
                                "preempted": record.preempted, "finished": record.finished}})
        for name, values in (("tokens", {"decode": record.decode_tokens, "prefill": record.prefill_tokens,
                                         "unused": record.unused_tokens}),
                             ("requests", {"running": record.running, "waiting": record.waiting}),
                             ("KV blocks", {"used": record.kv.blocks_used, "free": record.kv.blocks_free})):
            if name != "KV blocks" or record.kv.layout == "paged":
                events.append({"name": name, "ph": "C", "ts": _us(start), "pid": SCHEDULER_PID, "args": values})
        scheduled = {item.request_id: item for item in record.items}
        preempted = set(record.preempted)
        for view in record.requests:
            item = scheduled.get(view.id)
            if item is None and (view.reason is None or view.reason == REASON_NOT_ARRIVED):
                continue  # not arrived, or finished: nothing to draw
            track = tracks.get(view.id)
            if track is None:
                track = tracks[view.id] = _RequestTrack(view.id)
            if view.id in preempted:  # at the step's start: scheduling preempts it
                track.close()
                track.mark("preempted", start)
            if item is None:
                track.segment(f"waiting: {view.reason}", start, end, record.step, merge=True)
            elif item.kind == "decode":
                track.segment("decode", start, end, record.step, merge=True)
            else:  # each chunk its own slice: chunk sizes are the point
                track.segment(f"prefill {item.num_tokens} tok", start, end, record.step, merge=False)
            if view.generated and view.id not in got_first:
                got_first.add(view.id)
                track.mark("first token", end)
        for rid in record.finished:
            if rid in tracks:
                tracks[rid].close()
                tracks[rid].mark("finished", end)
        yield from events
    for rid in sorted(tracks):
        track = tracks[rid]
        track.close()
        yield {"name": "thread_name", "ph": "M", "pid": REQUESTS_PID, "tid": rid, "args": {"name": f"request {rid}"}}
        yield from track.events


def check_trace_path(path: str | os.PathLike) -> Path:
    """Before a run: a trace can be written there (a .json name in an existing folder)."""
    return check_output_path(path, (".json",), what="trace")


def write_trace(records: Iterable[StepRecord], path: str | os.PathLike) -> Path:
    """The trace of `records` (a list, or an iterator reading them from a recording) written to
    `path`, event by event as the records come; if reading them fails, `path` is left as it was."""
    p = check_trace_path(path)

    def write(f: TextIO) -> None:
        f.write('{"traceEvents": [')
        for i, event in enumerate(iter_trace_events(records)):
            f.write((",\n" if i else "\n") + json.dumps(event, allow_nan=False))
        f.write('\n], "displayTimeUnit": "ms", "otherData": ')
        json.dump({"source": "cbtui: one slice per scheduler step, one row per request"}, f)
        f.write("}\n")
    write_atomically(p, write)
    return p
