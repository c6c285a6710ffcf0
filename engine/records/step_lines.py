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

from . import frames
from .record_line import parse_record
from .types import RunHeader, StepRecord


class StepLines:
    """Where each step's line lies in one file; `read(step)` parses it back (None if it cannot).

    In a compressed recording (frames.py) a step lies in a frame: (start, end) are the frame's,
    and `index` is the line's place in it; the last frame read is kept decompressed, so paging
    through history decompresses each frame once. Steps a writer holds in its unwritten frame
    are read from memory (`hold`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()  # noted by the engine thread, read by the UI thread
        self._steps = array("q")
        self._starts = array("q")
        self._ends = array("q")
        self._index = array("q")  # the line's place in its frame; -1: a plain line
        self._held: dict[int, bytes] = {}  # step -> its line, not in the file yet
        self._frame: tuple[int, list[bytes]] | None = None  # (start, lines) of the last frame read
        self._fd: int | None = None

    def __len__(self) -> int:
        return len(self._steps)

    def note(self, step: int, start: int, end: int, index: int = -1) -> None:
        with self._lock:
            self._steps.append(step)
            self._starts.append(start)
            self._ends.append(end)
            self._index.append(index)
            self._held.pop(step, None)

    def hold(self, step: int, line: bytes) -> None:
        """A step written to memory only, for now (a frame not yet full)."""
        with self._lock:
            self._held[step] = line

    def reset(self) -> None:
        with self._lock:
            del self._steps[:], self._starts[:], self._ends[:], self._index[:]
            self._held.clear()
            self._frame = None

    def first_step(self) -> int | None:
        with self._lock:
            if self._steps:
                return self._steps[0]
            return min(self._held) if self._held else None

    def use(self, fd: int) -> None:
        """Read through `fd` (this object closes it) instead of opening the path: the file as it was
        opened, whatever the path names later."""
        self.close()
        self._fd = fd

    def read(self, step: int) -> StepRecord | None:
        with self._lock:
            held = self._held.get(step)
            index = bisect_left(self._steps, step)
            if held is None and (index == len(self._steps) or self._steps[index] != step):
                return None
            if held is None:
                start, end, line_index = self._starts[index], self._ends[index], self._index[index]
        try:
            if held is not None:
                line = held
            elif line_index < 0:
                line = self._pread(start, end)
            else:
                line = self._frame_lines(start, end)[line_index]
            record = parse_record(line.decode("utf-8"))
        except (OSError, ValueError, IndexError):  # the file changed under us: that step is not there to show
            return None
        return record if record.step == step else None

    def _pread(self, start: int, end: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self._fd, end - start, start)

    def _frame_lines(self, start: int, end: int) -> list[bytes]:
        frame = self._frame
        if frame is None or frame[0] != start:
            frame = self._frame = (start, frames.decompress(self._pread(start, end)))
        return frame[1]

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
    path again); None: the path is opened here. Compressed (a name ending in .xz, frames.py): the
    header is a frame of its own, records go out FRAME_RECORDS to a frame, and `lines` reads the
    steps of the frame not written yet from memory; a run killed outright loses at most that frame."""

    def __init__(self, path: str | Path, file: BinaryIO | None = None, compressed: bool | None = None):
        self.path = Path(path)
        self.lines = StepLines(self.path)
        self.error: str | None = None
        # Frames of records, each an xz stream (frames.py): a name ending in .xz asks for them.
        self.compressed = self.path.suffix == ".xz" if compressed is None else compressed
        self._frame: list[tuple[int, bytes]] = []  # (step, line) of the frame being filled
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
        self._frame = []
        if self.error is None:
            try:
                self._file.seek(0)
                self._file.truncate()
            except OSError as exc:
                self._failed(exc)
        self._write_line(header.to_dict())

    def write(self, record: StepRecord) -> None:
        if self.compressed:
            if self.error is None:
                line = (json.dumps(record.to_dict()) + "\n").encode("utf-8")
                self._frame.append((record.step, line))
                self.lines.hold(record.step, line)
                if len(self._frame) >= frames.FRAME_RECORDS:
                    self.flush_frame()
            return
        start = self._end
        if self._write_line(record.to_dict()):
            self.lines.note(record.step, start, self._end)

    def flush_frame(self) -> None:
        """Writes the records held so far as one frame (a compressed recording; at close, at the latest)."""
        held, self._frame = self._frame, []
        if not held or self.error is not None:
            return
        start = self._end
        if self._write_bytes(frames.compress([line for _, line in held])):
            for index, (step, _) in enumerate(held):
                self.lines.note(step, start, self._end, index)

    def _write_line(self, data: dict) -> bool:
        line = (json.dumps(data) + "\n").encode("utf-8")
        return self._write_bytes(frames.compress([line]) if self.compressed else line)

    def _write_bytes(self, line: bytes) -> bool:
        if self.error is not None:
            return False
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
        self.flush_frame()
        self.lines.close()
        try:
            self._file.close()
        except OSError as exc:
            if self.error is None:
                self._failed(exc)
