"""A recorded run: the StepRecords that `cbtui scenario NAME --json` prints, one per line, read
back and handed out one per step, so the dashboard can replay a run without its engine (recorded on
a GPU box, shown on a laptop; a scheduler bug attached to an issue, stepped through later).

A recording is data from outside, so every line is checked against the record types
(schema.py) and for what the panels rely on before the dashboard sees it: a bad file is one
error naming the line and the field, never a traceback mid-replay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import check_header_json, check_record_json
from .types import RunHeader, StepRecord

# Far beyond any real run, and small enough that a panel drawing them stays quick and exact.
MAX_KEYS = 1 << 24  # keys of one request (the mask's columns)
MAX_BLOCKS = 1 << 22  # KV blocks in the pool (the KV grid's cells)
HOW_TO_RECORD = "record one with: cbtui scenario NAME --json > FILE"


class RecordingError(ValueError):
    """A recording that cannot be replayed; the message names the file, the line and what is wrong."""


def _check_consistent(record: StepRecord) -> None:
    """What the panels rely on beyond types: the mask's rows, the KV grid's block numbers."""
    if record.budget < 1:
        raise ValueError(f"budget={record.budget} must be >= 1")
    for i, item in enumerate(record.items):
        if item.kind not in ("decode", "prefill"):
            raise ValueError(f"items[{i}].kind={item.kind!r} must be 'decode' or 'prefill'")
        if item.num_tokens < 1 or item.key_len != item.first_pos + item.num_tokens or item.key_len > MAX_KEYS:
            raise ValueError(f"items[{i}]: key_len must be first_pos + num_tokens, with num_tokens >= 1 and "
                             f"key_len <= {MAX_KEYS}")
    kv = record.kv
    if kv.num_blocks > MAX_BLOCKS:
        raise ValueError(f"kv.num_blocks={kv.num_blocks} is more than {MAX_BLOCKS}")
    if kv.layout not in ("paged", "dense") or kv.block_size < 1:
        raise ValueError(f"kv: layout must be 'paged' or 'dense' and block_size >= 1 (got {kv.layout!r}, "
                         f"{kv.block_size})")
    for name in ("block_tables", "freed_blocks"):
        for rid, blocks in getattr(kv, name).items():
            if any(b >= kv.num_blocks for b in blocks):
                raise ValueError(f"kv.{name}[{rid}]: a block number is not below num_blocks={kv.num_blocks}")
    if record.memory.source not in ("cuda", "rss"):
        raise ValueError(f"memory.source={record.memory.source!r} must be 'cuda' or 'rss'")


def _parse_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # thousands of nested brackets: no record looks like that
        raise ValueError("not a record: nested too deeply") from None


def parse_header(line: str) -> RunHeader | None:
    """The run header, when `line` is one (a JSON object with kind 'header'); None for anything else."""
    try:
        data = _parse_json(line)
    except ValueError:
        return None
    if type(data) is not dict or data.get("kind") != "header":
        return None
    check_header_json(data)
    return RunHeader.from_dict(data)


def parse_record(line: str) -> StepRecord:
    """One line of a recording as a StepRecord; ValueError says what is wrong with it."""
    data = _parse_json(line)
    check_record_json(data)
    record = StepRecord.from_dict(data)
    _check_consistent(record)
    return record


@dataclass(frozen=True)
class Recording:
    """What the dashboard needs besides the records: a title and a help text (as a scenario has)."""

    records: list[StepRecord]
    title: str
    description: str
    question: str = ""
    header: RunHeader | None = None  # None: recorded before runs had headers


def load_recording(path: str | Path) -> Recording:
    """Every record of the file, in order; RecordingError names the first bad line. A last line cut
    short (the recording run was killed mid-write) is left out and said, not an error: the steps
    before it are good."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); {HOW_TO_RECORD}") from None
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    records: list[StepRecord] = []
    lines = text.splitlines()
    cut_short = False
    header = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not records and header is None:
            try:
                header = parse_header(line)
            except ValueError as exc:
                raise RecordingError(f"{path}:{number}: not a run header: {exc}; {HOW_TO_RECORD}") from None
            if header is not None:
                continue
        try:
            record = parse_record(line)
        except ValueError as exc:
            if number == len(lines) and not text.endswith("\n") and records and line.lstrip().startswith("{"):
                cut_short = True  # no newline after it: the writer stopped mid-line
                break
            raise RecordingError(f"{path}:{number}: not a StepRecord: {exc}; {HOW_TO_RECORD}") from None
        if records and record.step <= records[-1].step:
            raise RecordingError(f"{path}:{number}: step {record.step} comes after step {records[-1].step}; "
                                 f"a recording holds one run, its steps in order")
        records.append(record)
    if not records:
        raise RecordingError(f"{path}: holds no StepRecords; {HOW_TO_RECORD}")
    steps = f"steps {records[0].step}..{records[-1].step}" if len(records) > 1 else f"step {records[0].step}"
    description = (f"A recorded run: {len(records)} StepRecords ({steps}) from {path}. Every panel shows the "
                   f"record as it was written; memory is the recorded run's, not this machine's. r replays "
                   f"from the first step.")
    if cut_short:
        description += f" Its last line (line {len(lines)}) was cut short and is left out."
    if header is None:
        return Recording(records, f"Replay: {path.name}", description)
    about = "\n\n".join(t for t in (header.description, description) if t)
    return Recording(records, f"Replay: {header.title or path.name}", about, header.question, header)


def header_from_records(records: list[StepRecord]) -> RunHeader:
    """What a recording without a header line says of its run (settings it does not know stay empty)."""
    first = records[0]
    return RunHeader(model="", device="cuda" if first.memory.source == "cuda" else "cpu", dtype="", attention="",
                     kv_layout=first.kv.layout, policy=first.policy, max_tokens_per_step=first.budget,
                     prefill_chunk_size=0, block_size=first.kv.block_size, num_blocks=first.kv.num_blocks)


class RecordedRun:
    """Steps through recorded StepRecords as an engine steps through a scenario: what the
    dashboard's controller drives (`step`, `has_unfinished`). Restart makes a new one."""

    def __init__(self, records: list[StepRecord], header: RunHeader | None = None):
        self._records = records
        self._next = 0
        self._header = header or header_from_records(records)

    def header(self) -> RunHeader:
        return self._header

    def step(self) -> StepRecord:
        record = self._records[self._next]
        self._next += 1
        return record

    def has_unfinished(self) -> bool:
        return self._next < len(self._records)
