"""A recorded run: the StepRecords that `cbtui scenario NAME --json` prints, one per line, read
back and handed out one per step, so the dashboard can replay a run without its engine (recorded on
a GPU box, shown on a laptop; a scheduler bug attached to an issue, stepped through later).

A recording is data from outside, so it is read defensively:
- only a regular file is read (not /dev/zero, a pipe or a device), a line at a time, and no line
  may be longer than MAX_LINE_BYTES;
- lines are split on '\\n' alone (a raw U+2028 inside a JSON string is text, not a line break);
- the file is read as the replay reaches it: the dashboard's first frame waits for the header
  and the first record, never for the whole file;
- every line is checked against the record types and for what the panels rely on (record_line.py),
  and the records together for the story one run tells (steps in order, a request finishes once,
  no KV block held by two requests, generated counts never go down).
A bad line is one error naming the file, the line and what is wrong, never a traceback: before
the dashboard starts when it is the first record, as the step's error when it comes mid-replay.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from . import frames
from .record_line import NotJSON, parse_header, parse_record
from .step_lines import StepLines
from .types import RunHeader, StepRecord

MAX_LINE_BYTES = 64 << 20  # one record; a step of thousands of requests is a few MB
HOW_TO_RECORD = "record one with: cbtui scenario NAME --json > FILE"


class RecordingError(ValueError):
    """A recording that cannot be replayed; the message names the file, the line and what is wrong."""


class StoryCheck:
    """What the records of one run say together, checked as they come one by one: steps go
    forward, a request finishes once and is not scheduled after, no two requests hold the same KV
    block in a step unless the prefix cache shares it (with as many holders as it says), a request's
    generated count never goes down. Keeps a few numbers per request, never the records."""

    def __init__(self) -> None:
        self._last_step: int | None = None
        self._finished: dict[int, int] = {}  # request id -> the step it finished in
        self._generated: dict[int, int] = {}  # request id -> generated tokens in the last record

    def check(self, record: StepRecord) -> None:
        """Raises ValueError saying what `record` contradicts in the records before it."""
        step = record.step
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step {step} comes after step {self._last_step}; a recording holds one run, "
                             f"its steps in order")
        for item in record.items:
            done = self._finished.get(item.request_id)
            if done is not None:
                raise ValueError(f"step {step} schedules request {item.request_id}, which finished at step {done}")
        owners: dict[int, int] = {}
        holders: dict[int, int] = {}  # shared blocks: how many tables hold them
        shared = record.kv.prefix.shared if record.kv.prefix is not None else {}
        for key, blocks in record.kv.block_tables.items():
            rid = int(key)
            gone = record.kv.evicted.get(key, ())  # evicted entries hold a stand-in: one of its own blocks
            for index, block in enumerate(blocks):
                if index in gone:
                    continue
                owner = owners.get(block)
                if owner is None:
                    owners[block] = rid
                elif owner == rid:
                    raise ValueError(f"step {step}: request {rid} holds KV block {block} twice")
                elif str(block) not in shared:
                    raise ValueError(f"step {step}: KV block {block} is held by requests {owner} and {rid} at once")
                else:
                    holders[block] = holders.get(block, 1) + 1
        for key, count in shared.items():
            if holders.get(int(key), 1) != count:
                raise ValueError(f"step {step}: KV block {key} is marked shared by {count} requests but "
                                 f"{holders.get(int(key), 1)} hold it")
        generated = self._generated
        for view in record.requests:
            before = generated.get(view.id)
            if before is not None and view.generated < before:
                raise ValueError(f"step {step}: request {view.id} has generated={view.generated}, fewer than the "
                                 f"{before} it had in the step before")
        for view in record.requests:
            generated[view.id] = view.generated
        finished = self._finished
        for rid in record.finished:
            if rid in finished:
                raise ValueError(f"step {step}: request {rid} finishes again (it finished at step {finished[rid]})")
            finished[rid] = step
        self._last_step = step


def _open_regular(path: Path) -> IO[bytes]:
    """The file opened for reading, if it is a regular file (a device or a pipe never ends)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # before open(): opening a FIFO would block
            raise RecordingError(f"{path}: not a regular file (a device, a pipe or a directory); {HOW_TO_RECORD}")
        f = open(path, "rb")  # noqa: SIM115 - the reader closes it at the end, on an error or on close()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped between the two looks
        f.close()
        raise RecordingError(f"{path}: not a regular file (a device, a pipe or a directory); {HOW_TO_RECORD}")
    return f


class RecordReader:
    """A recording file read one line at a time: the header (if any) on opening, then one checked
    StepRecord per `next()`. A line that is not JSON at the very end (the writer was killed
    mid-line, a newline after it or not) ends the records and is said in `cut_short_line`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header: RunHeader | None = None
        self.count = 0  # records read so far
        self.first_step: int | None = None
        self.last_step: int | None = None
        self.cut_short_line: int | None = None
        self.bad_line: int | None = None  # the line that stopped the reading with a RecordingError
        self.done = False  # read to the end, or to a bad line
        self._number = 0  # lines read so far
        self._ahead: tuple[int, str, tuple[int, int, int]] | None = None  # a line read but not used, and where
        self._framed: Iterator[tuple[int, int, list[bytes]]] | None = None  # a compressed recording's frames
        self._frame_lines: list[tuple[bytes, tuple[int, int, int]]] = []  # lines of the frame being read
        self._offset = 0  # bytes read so far
        self.lines = StepLines(self.path)  # where each record read lies: a past step is read back from there
        self._story = StoryCheck()
        self._file: IO[bytes] | None = _open_regular(self.path)
        try:
            if frames.is_framed(self._file.read(len(frames.XZ_MAGIC))):
                self._framed = frames.read_frames(self._file)
            self._file.seek(0)
            first = self._line()
            if first is not None:
                number, line, _ = first
                try:
                    self.header = parse_header(line)
                except ValueError as exc:
                    raise self._error(number, f"not a run header: {exc}; {HOW_TO_RECORD}") from None
                if self.header is None:
                    self._ahead = first
        except RecordingError:
            self.close()
            raise

    def close(self) -> None:
        """Closes the file the records are read from (`lines` reads past steps on its own)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _error(self, number: int, message: str) -> RecordingError:
        self.close()
        self.done, self.bad_line = True, number
        return RecordingError(f"{self.path}:{number}: {message}")

    def _raw_line(self) -> tuple[bytes, tuple[int, int, int]]:
        """The next raw line and where it lies: (start, end, -1) in a plain file, (the frame's start,
        its end, the line's place in it) in a compressed one; b"" at the end."""
        assert self._file is not None
        if self._framed is None:
            start = self._offset
            raw = self._file.readline(MAX_LINE_BYTES + 1)  # splits on b"\n" only
            self._offset += len(raw)
            return raw, (start, self._offset, -1)
        while not self._frame_lines:
            try:
                start, end, lines = next(self._framed)
            except StopIteration:
                return b"", (0, 0, -1)
            except frames.FrameError as exc:
                if "cut short" in str(exc) and self.count:  # the writer stopped mid-frame
                    self.cut_short_line = self._number + 1
                    return b"", (0, 0, -1)
                raise self._error(self._number + 1, f"{exc}; {HOW_TO_RECORD}") from None
            self._frame_lines = [(line, (start, end, i)) for i, line in enumerate(lines)]
        return self._frame_lines.pop(0)

    def _line(self) -> tuple[int, str, tuple[int, int, int]] | None:
        """The next line that is not blank, with its number and where it lies; None at the end of the file."""
        if self._ahead is not None:
            line, self._ahead = self._ahead, None
            return line
        while self._file is not None:
            try:
                raw, where = self._raw_line()
            except OSError as exc:
                raise self._error(self._number + 1, f"cannot read the file ({exc.strerror or exc})") from None
            if not raw:
                self.close()
                return None
            self._number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise self._error(self._number, f"the line is longer than {MAX_LINE_BYTES >> 20} MiB; no StepRecord "
                                                f"is that long; {HOW_TO_RECORD}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise self._error(self._number, f"not UTF-8 text ({exc.reason} at byte {exc.start} of the line); "
                                                f"{HOW_TO_RECORD}") from None
            if text.strip():
                return self._number, text, where
        return None

    def __iter__(self) -> Iterator[StepRecord]:
        return self

    def __next__(self) -> StepRecord:
        if self.done:
            raise StopIteration
        got = self._line()
        if got is None:
            self.done = True
            raise StopIteration
        number, line, where = got
        try:
            record = parse_record(line)
        except NotJSON as exc:
            if self.count and line.lstrip().startswith("{") and self._line() is None:
                self.cut_short_line = number  # the last line, and not JSON: the writer stopped mid-line
                self.done = True
                raise StopIteration from None
            raise self._error(number, f"not a StepRecord: {exc}; {HOW_TO_RECORD}") from None
        except ValueError as exc:
            raise self._error(number, f"not a StepRecord: {exc}; {HOW_TO_RECORD}") from None
        try:
            self._story.check(record)
        except ValueError as exc:  # a good record, but not the next step of this run
            raise self._error(number, str(exc)) from None
        self.count += 1
        self.lines.note(record.step, *where)
        if self.first_step is None:
            self.first_step = record.step
        self.last_step = record.step
        return record


def _about(path: Path, reader: RecordReader) -> str:
    """The help text's part about the file: how many records (so far), and a cut-short last line."""
    count = reader.count
    steps = f"steps {reader.first_step}..{reader.last_step}" if count > 1 else f"step {reader.first_step}"
    if reader.done:
        text = f"A recorded run: {count} StepRecords ({steps}) from {path}."
    else:
        text = (f"A recorded run from {path}, read as the replay reaches it: {count} StepRecords so far "
                f"({steps}).")
    text += (" Every panel shows the record as it was written; memory is the recorded run's, not this "
             "machine's. r replays from the first step.")
    if reader.bad_line is not None:
        text += f" Line {reader.bad_line} is not a good record: the replay stops before it."
    if reader.cut_short_line is not None:
        text += f" Its last line (line {reader.cut_short_line}) was cut short and is left out."
    return text


class RecordingFile:
    """A recording opened for replay: what the dashboard needs besides the records (a title and a
    help text, as a scenario has), and runs over the records, read from the file as they step.
    Opening reads the header and the first record only, so a file with no good first record is an
    error now (RecordingError) and a long one opens at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        reader = RecordReader(self.path)
        first = next(reader, None)  # a RecordingError has closed the file
        if first is None:
            raise RecordingError(f"{self.path}: holds no StepRecords; {HOW_TO_RECORD}")
        self._first: StepRecord = first
        self._unused: RecordReader | None = reader  # the first run reads on from here
        self._furthest = reader  # the reader that got furthest: what the help text counts
        self._current: RecordReader | None = None
        self.header = reader.header
        self.title = f"Replay: {self.header.title if self.header and self.header.title else self.path.name}"
        self.question = self.header.question if self.header else ""

    @property
    def description(self) -> str:
        about = _about(self.path, self._furthest)
        header_text = self.header.description if self.header else ""
        return "\n\n".join(t for t in (header_text, about) if t)

    def _reader(self) -> tuple[RecordReader, list[StepRecord]]:
        """A reader at the first record, and the records it already read."""
        if self._current is not None:
            self._current.close()  # a replay started over: the old run's file is done with
            self._current.lines.close()
        if self._unused is not None:
            reader, self._unused = self._unused, None
            self._current = reader
            return reader, [self._first]
        reader = self._current = RecordReader(self.path)
        return reader, []

    def records(self) -> Iterator[StepRecord]:
        """Every record from the first, read and checked as it is asked for; RecordingError at a
        bad line."""
        reader, read = self._reader()
        yield from read
        for record in reader:
            if reader.count >= self._furthest.count:
                self._furthest = reader
            yield record
        if reader.count >= self._furthest.count:
            self._furthest = reader  # read to the end: the help text says so

    def _lines(self) -> StepLines:
        reader = self._current if self._current is not None else self._unused
        return reader.lines if reader is not None else self._furthest.lines

    def first_step(self) -> int | None:
        """The first step the replay has read (the dashboard's history pages older steps from here)."""
        return self._lines().first_step()

    def read(self, step: int) -> StepRecord | None:
        """A step the replay has read already, read again from the file (None if it cannot be)."""
        return self._lines().read(step)

    def run(self) -> RecordedRun:
        """A replay from the first step (what `r` starts over with)."""
        return RecordedRun(self.records(), self.header)


def open_recording(path: str | Path) -> RecordingFile:
    """The recording at `path`, its header and first record read; RecordingError says why not."""
    return RecordingFile(path)


@dataclass(frozen=True)
class Recording:
    """A recording read whole (load_recording): its records, and a title and help text."""

    records: list[StepRecord]
    title: str
    description: str
    question: str = ""
    header: RunHeader | None = None  # None: recorded before runs had headers


def load_recording(path: str | Path) -> Recording:
    """Every record of the file, in order; RecordingError names the first bad line. A last line cut
    short (the recording run was killed mid-write) is left out and said, not an error: the steps
    before it are good. For small files (tests, tools): a replay reads with open_recording."""
    opened = open_recording(path)
    records = list(opened.records())
    return Recording(records, opened.title, opened.description, opened.question, opened.header)


def header_from_records(records: list[StepRecord]) -> RunHeader:
    """What a recording without a header line says of its run (settings it does not know stay empty)."""
    first = records[0]
    return RunHeader(model="", device="cuda" if first.memory.source == "cuda" else "cpu", dtype="", attention="",
                     kv_layout=first.kv.layout, policy=first.policy, max_tokens_per_step=first.budget,
                     prefill_chunk_size=0, block_size=first.kv.block_size, num_blocks=first.kv.num_blocks,
                     prefix_caching=first.kv.prefix is not None)


class RecordedRun:
    """Steps through recorded StepRecords as an engine steps through a scenario: what the
    dashboard's controller drives (`step`, `has_unfinished`). Restart makes a new one.

    `records` may be a list or an iterator that reads them as they are asked for
    (RecordingFile.records): the next record is read one step ahead, and a RecordingError from it
    is raised by the step that would have shown it, so the dashboard shows it as that step's error.
    """

    def __init__(self, records: Iterable[StepRecord], header: RunHeader | None = None):
        self._records = iter(records)
        self._ahead: StepRecord | None = None
        self._error: RecordingError | None = None
        self._fetch()
        if header is None:
            if self._ahead is None:
                raise RecordingError("a recorded run needs a run header or at least one StepRecord")
            header = header_from_records([self._ahead])
        self._header = header

    def _fetch(self) -> None:
        try:
            self._ahead = next(self._records, None)
        except RecordingError as exc:
            self._ahead, self._error = None, exc

    def header(self) -> RunHeader:
        return self._header

    def step(self) -> StepRecord:
        if self._error is not None:
            raise self._error
        record = self._ahead
        if record is None:
            raise RecordingError("the recording has no more steps")
        self._fetch()
        return record

    def has_unfinished(self) -> bool:
        return self._ahead is not None or self._error is not None
