"""A recording file read back one step at a time, and a recording written as a run goes.

Each step's line is remembered by where it lies in the file (start, end), so a past step costs
one read when it is asked for and nothing in memory until then: the dashboard's history reaches
a long run's first step without keeping its records.
"""

from __future__ import annotations

import json
import os
import threading
from array import array
from bisect import bisect_left
from pathlib import Path
from typing import BinaryIO

from .record_line import parse_record
from .types import RunHeader, StepRecord


class StepLines:
    """Where each step's line lies in one file; `read(step)` parses it back (None if it cannot)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()  # noted by the engine thread, read by the UI thread
        self._steps = array("q")
        self._starts = array("q")
        self._ends = array("q")
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self._steps)

    def note(self, step: int, start: int, end: int) -> None:
        with self._lock:
            self._steps.append(step)
            self._starts.append(start)
            self._ends.append(end)

    def reset(self) -> None:
        with self._lock:
            del self._steps[:], self._starts[:], self._ends[:]

    def first_step(self) -> int | None:
        with self._lock:
            return self._steps[0] if self._steps else None

    def use(self, fd: int) -> None:
        """Read through `fd` (this object closes it) instead of opening the path: the file as it was
        opened, whatever the path names later."""
        self.close()
        self._fd = fd

    def read(self, step: int) -> StepRecord | None:
        with self._lock:
            index = bisect_left(self._steps, step)
            if index == len(self._steps) or self._steps[index] != step:
                return None
            start, end = self._starts[index], self._ends[index]
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
            record = parse_record(os.pread(self._fd, end - start, start).decode("utf-8"))
        except (OSError, ValueError):  # the file changed under us: that step is not there to show
            return None
        return record if record.step == step else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class RecordingWriter:
    """Writes a run as `--json` does (the run header, then one StepRecord a line), each line flushed
    as it is written, so the file is a good recording at every moment and `lines` can read any
    step back. `start` begins the file anew (a restarted run: with the header it had). An OSError
    (a full disk) stops the writing and is kept in `error`; the run goes on. `file`: the file to write, opened
    by the caller to read and write (past steps are then read back through it, not by opening the
    path again); None: the path is opened here."""

    def __init__(self, path: str | Path, file: BinaryIO | None = None):
        self.path = Path(path)
        self.lines = StepLines(self.path)
        self.error: str | None = None
        if file is None:
            file = open(self.path, "wb")  # noqa: SIM115 - open for the run; close() closes it
        else:
            self.lines.use(os.dup(file.fileno()))
        self._file = file
        self._end = 0
        self._header: RunHeader | None = None

    def start(self, header: RunHeader | None = None) -> None:
        header = self._header = header or self._header
        if header is None:
            raise ValueError("the first start of a recording needs the run header")
        self.lines.reset()
        self._end = 0
        if self.error is None:
            try:
                self._file.seek(0)
                self._file.truncate()
            except OSError as exc:
                self._failed(exc)
        self._write_line(header.to_dict())

    def write(self, record: StepRecord) -> None:
        start = self._end
        if self._write_line(record.to_dict()):
            self.lines.note(record.step, start, self._end)

    def _write_line(self, data: dict) -> bool:
        if self.error is not None:
            return False
        line = (json.dumps(data) + "\n").encode("utf-8")
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as exc:
            self._failed(exc)
            return False
        self._end += len(line)
        return True

    def _failed(self, exc: OSError) -> None:
        self.error = f"{self.path}: cannot write the recording ({exc.strerror or exc}); it stops at the last whole step"

    def close(self) -> None:
        self.lines.close()
        try:
            self._file.close()
        except OSError as exc:
            if self.error is None:
                self._failed(exc)
