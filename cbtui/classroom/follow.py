"""A recording followed as it is written: what a viewer of a shared run (`cbtui watch`) steps through.

`FollowedRun` is what the dashboard's EngineController drives in place of an engine: each `step()`
hands out the next record once its whole line is in the file, or None (after a short wait) when the
writer has not got there yet; the run never ends on its own, since the presenter may step on.
`Following` keeps the run being followed across restarts (the presenter's r writes the file anew)
and reads past steps back for the dashboard's history.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from engine.records import RunHeader, StepRecord
from engine.records.recording import MAX_LINE_BYTES, RecordingError, parse_header, parse_record
from engine.records.step_lines import StepLines

from .session import NO_FOLLOW

POLL_S = 0.05  # how long step() waits for a new line before it says there is none yet


class NoRunYet(RecordingError):
    """Nothing to follow yet (no folder, no file, no header line): the presenter has not started."""
READ_BYTES = 1 << 16


class FollowedRun:
    def __init__(self, path: str | Path, wait_s: float = 10.0):
        """Opens the recording and reads its header line, waiting up to `wait_s` for the writer to
        put it there; RecordingError says why not."""
        self.path = Path(path)
        self.lines = StepLines(self.path)
        self._offset = 0  # bytes consumed: whole lines only
        self._pending = bytearray()  # read but not yet a whole line
        self._scanned = 0  # of _pending, bytes known to hold no newline
        deadline = time.monotonic() + wait_s
        self._fd: int | None = None
        while True:
            try:
                # Never through a link, never waiting on a FIFO: the folder may be a stranger's.
                self._fd = os.open(self.path, os.O_RDONLY | NO_FOLLOW)
                break
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise NoRunYet(f"{self.path}: no run to follow (no such file); is the presenter "
                                         f"running `cbtui serve`?") from None
                time.sleep(POLL_S)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise RecordingError(f"{self.path}: a link, not a recording; `cbtui serve` writes no "
                                         f"links") from None
                raise RecordingError(f"{self.path}: cannot read the file ({exc.strerror or exc})") from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            self.close()
            raise RecordingError(f"{self.path}: not a regular file (a FIFO, device or folder); `cbtui serve` "
                                 f"writes a file")
        self._inode = info.st_ino
        self.lines.use(os.dup(self._fd))  # past steps are read from this file, not whatever the path names later
        header = None
        while header is None:
            line = self._next_line()
            if line is not None:
                try:
                    header = parse_header(line[0])
                except ValueError as exc:
                    self.close()
                    raise RecordingError(f"{self.path}:1: not a run header: {exc}") from None
                if header is None:
                    self.close()
                    raise RecordingError(f"{self.path}:1: not a run header; follow a file that "
                                         f"`cbtui serve` writes")
            elif time.monotonic() > deadline:
                self.close()
                raise NoRunYet(f"{self.path}: no run header yet; is the presenter running `cbtui serve`?")
            else:
                time.sleep(POLL_S)
        self._header: RunHeader = header

    def header(self) -> RunHeader:
        return self._header

    def has_unfinished(self) -> bool:
        return True  # the presenter may always step on (or restart)

    def step(self) -> StepRecord | None:
        got = self._next_line()
        if got is None:
            time.sleep(POLL_S)
            return None
        line, start = got
        try:
            record = parse_record(line)
        except ValueError as exc:
            raise RecordingError(f"{self.path}: a line at byte {start} is not a StepRecord: {exc}") from None
        self.lines.note(record.step, start, start + len(line.encode("utf-8")))
        return record

    def restarted(self) -> bool:
        """The file was begun anew (shorter than what was read) or replaced by another."""
        try:
            info = os.stat(self.path)
        except OSError:
            return False
        return info.st_ino != self._inode or info.st_size < self._offset

    def _next_line(self) -> tuple[str, int] | None:
        """The next whole line and where it starts; None when the writer has not finished one."""
        pending = self._pending
        while (end := pending.find(b"\n", self._scanned)) < 0:  # each byte searched once: no quadratic re-scan
            self._scanned = len(pending)
            if len(pending) > MAX_LINE_BYTES:
                raise RecordingError(f"{self.path}: a line is longer than {MAX_LINE_BYTES >> 20} MiB")
            if self._fd is None:
                return None
            chunk = os.pread(self._fd, READ_BYTES, self._offset + len(pending))
            if not chunk:
                return None
            pending += chunk
        raw = bytes(pending[:end])
        del pending[:end + 1]
        self._scanned = 0
        start = self._offset
        self._offset += len(raw) + 1
        try:
            return raw.decode("utf-8"), start
        except UnicodeDecodeError as exc:
            raise RecordingError(f"{self.path}: the line at byte {start} is not UTF-8 ({exc.reason})") from None

    def close(self) -> None:
        self.lines.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Following:
    """The run being followed, begun anew on `restart()`; it serves the dashboard's history as the
    file its steps are in (PastSteps)."""

    def __init__(self, path: str | Path, wait_s: float = 10.0):
        self.path = Path(path)
        self.current = FollowedRun(self.path, wait_s)

    def restart(self) -> FollowedRun:
        old, self.current = self.current, FollowedRun(self.path)
        old.close()
        return self.current

    def first_step(self) -> int | None:
        return self.current.lines.first_step()

    def read(self, step: int) -> StepRecord | None:
        return self.current.lines.read(step)
