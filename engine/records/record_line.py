"""One line of a recording read back as a StepRecord: JSON, then the record types (schema.py),
then what the panels rely on beyond types (the mask's rows, the KV grid's block numbers). A bad
line is a ValueError saying what is wrong with it; the reader adds the file and the line number.
"""

from __future__ import annotations

import json
from typing import Any

from .schema import check_header_json, check_record_json, shown
from .types import RunHeader, StepRecord

# Far beyond any real run, and small enough that a panel drawing them stays quick and exact.
MAX_KEYS = 1 << 24  # keys of one request (the mask's columns)
MAX_BLOCKS = 1 << 22  # KV blocks in the pool (the KV grid's cells)


class NotJSON(ValueError):
    """The line is not JSON at all: on the last line, what a writer killed mid-line leaves."""


def _check_consistent(record: StepRecord) -> None:
    """What the panels rely on beyond types: the mask's rows, the KV grid's block numbers."""
    if record.budget < 1:
        raise ValueError(f"budget={record.budget} must be >= 1")
    for i, item in enumerate(record.items):
        if item.kind not in ("decode", "prefill"):
            raise ValueError(f"items[{i}].kind={shown(item.kind)} must be 'decode' or 'prefill'")
        if item.num_tokens < 1 or item.key_len != item.first_pos + item.num_tokens or item.key_len > MAX_KEYS:
            raise ValueError(f"items[{i}]: key_len must be first_pos + num_tokens, with num_tokens >= 1 and "
                             f"key_len <= {MAX_KEYS}")
    kv = record.kv
    if kv.num_blocks > MAX_BLOCKS:
        raise ValueError(f"kv.num_blocks={kv.num_blocks} is more than {MAX_BLOCKS}")
    if kv.layout not in ("paged", "dense") or kv.block_size < 1:
        raise ValueError(f"kv: layout must be 'paged' or 'dense' and block_size >= 1 (got {shown(kv.layout)}, "
                         f"{kv.block_size})")
    for name in ("block_tables", "freed_blocks"):
        for rid, blocks in getattr(kv, name).items():
            if any(b >= kv.num_blocks for b in blocks):
                raise ValueError(f"kv.{name}[{rid}]: a block number is not below num_blocks={kv.num_blocks}")
    prefix = kv.prefix
    if prefix is not None:
        if any(int(b) >= kv.num_blocks for b in prefix.shared) or any(b >= kv.num_blocks for b in prefix.cached):
            raise ValueError(f"kv.prefix: a shared or cached block number is not below num_blocks={kv.num_blocks}")
        if any(n < 2 for n in prefix.shared.values()):
            raise ValueError("kv.prefix.shared: a shared block is held by 2 requests or more")
    for rid, indices in kv.evicted.items():
        if rid not in kv.block_tables or any(i >= len(kv.block_tables[rid]) for i in indices):
            raise ValueError(f"kv.evicted[{rid}]: an index is not in the request's block table")
    window = record.attention_window
    if window is not None and (len(window) != 2 or window[1] < 1):
        raise ValueError(f"attention_window={shown(window)} must be [sinks, window] with window >= 1")
    if record.memory.source not in ("cuda", "rss"):
        raise ValueError(f"memory.source={shown(record.memory.source)} must be 'cuda' or 'rss'")


def _parse_json(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise NotJSON(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # thousands of nested brackets: no record looks like that
        raise ValueError("not a record: nested too deeply") from None
    except ValueError:  # an integer of thousands of digits: Python will not convert it
        raise ValueError("not a record: an integer of thousands of digits") from None


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
