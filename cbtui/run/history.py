"""Past StepRecords, bounded in memory, and which one is on screen (the newest, or a past one).

The newest `HOT` records stay as objects: a frame draws the step on screen and the few before it
(the rate window). Older ones in the window are kept compact (pickled and compressed bytes, about a
quarter of the objects' size, and invisible to the garbage collector, which would otherwise walk
every request view of every kept step on each full pass). When the run is being written to a file
(`pages`: a live run's recording, or the recording a replay reads), steps older than the window
are read back from it, so history reaches the run's first step whatever its length.
"""

from __future__ import annotations

import pickle
import zlib
from bisect import bisect_left
from collections import OrderedDict, deque
from typing import Protocol

from engine.records import StepRecord

HOT = 64  # newest records kept as objects
DECODED = 32  # older records decoded lately, kept for the frames that show them again


class PastSteps(Protocol):
    """A file the run's records are in, read back one step at a time."""

    def first_step(self) -> int | None: ...

    def read(self, step: int) -> StepRecord | None: ...


def _pack(record: StepRecord) -> bytes:
    # Pickle is safe here: these bytes are made from this process's own records and never leave it.
    return zlib.compress(pickle.dumps(record, pickle.HIGHEST_PROTOCOL), 1)


def _unpack(data: bytes) -> StepRecord:
    return pickle.loads(zlib.decompress(data))  # our own bytes (see _pack), never a file's


class History:
    def __init__(self, limit: int = 1000, pages: PastSteps | None = None, hot: int = HOT):
        self._limit = max(limit, 1)
        self._hot_size = hot
        self._pages = pages
        self._steps: deque[int] = deque()  # steps kept in memory, oldest first
        self._hot: deque[StepRecord] = deque()  # the newest len(_hot) of them, as objects
        self._cold: deque[bytes] = deque()  # the older ones, packed
        self._decoded: OrderedDict[int, StepRecord] = OrderedDict()  # step -> record, least recent first
        self._viewing: int | None = None  # step number on screen; None follows the newest

    def __len__(self) -> int:
        """Records kept in memory."""
        return len(self._steps)

    def clear(self) -> None:
        self._steps.clear()
        self._hot.clear()
        self._cold.clear()
        self._decoded.clear()
        self._viewing = None

    def append(self, record: StepRecord) -> None:
        self._steps.append(record.step)
        self._hot.append(record)
        if len(self._hot) > self._hot_size:
            self._cold.append(_pack(self._hot.popleft()))
        if len(self._steps) > self._limit:
            self._steps.popleft()
            if self._cold:
                self._cold.popleft()
            else:
                self._hot.popleft()

    # -- the steps there are --------------------------------------------------------------------
    def _oldest(self) -> int | None:
        """The oldest step that can be shown: the file's first, else the oldest kept."""
        if not self._steps:
            return None
        first = self._pages.first_step() if self._pages is not None else None
        return self._steps[0] if first is None else min(first, self._steps[0])

    def _index(self, step: int) -> int | None:
        """Where `step` is in memory (None: not kept). Steps are consecutive in a run, so the first
        guess is right; a recording may skip steps, and then a binary search finds it."""
        if not self._steps or step < self._steps[0]:
            return None
        index = step - self._steps[0]
        if index < len(self._steps) and self._steps[index] == step:
            return index
        index = bisect_left(self._steps, step)
        return index if index < len(self._steps) and self._steps[index] == step else None

    def _record(self, step: int) -> StepRecord | None:
        """The record of `step` (None if neither memory nor the file has it)."""
        index = self._index(step)
        if index is not None:
            cold = len(self._cold)
            if index >= cold:
                return self._hot[index - cold]
            return self._decode(step, lambda: _unpack(self._cold[index]))
        if self._pages is None or (self._steps and step > self._steps[0]):
            return None
        pages = self._pages
        return self._decode(step, lambda: pages.read(step))

    def _decode(self, step: int, load) -> StepRecord | None:
        record = self._decoded.get(step)
        if record is not None:
            self._decoded.move_to_end(step)
            return record
        record = load()
        if record is not None:
            self._decoded[step] = record
            if len(self._decoded) > DECODED:
                self._decoded.popitem(last=False)
        return record

    def _shown_step(self) -> int | None:
        oldest = self._oldest()
        if oldest is None:
            return None
        newest = self._steps[-1]
        if self._viewing is None:
            return newest
        # A step that fell out of memory, with no file to read it from, shows the oldest kept.
        return min(max(self._viewing, oldest), newest)

    # -- what the dashboard asks --------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self._viewing is None

    def go_live(self) -> None:
        self._viewing = None

    def view(self, step: int | None) -> None:
        """Shows `step` (or the nearest step there is), or follows the newest (None, or a step past it).
        Two runs shown side by side walk their histories to the same step number this way."""
        self._viewing = None if step is None or not self._steps or step >= self._steps[-1] else step

    def newest_step(self) -> int | None:
        return self._steps[-1] if self._steps else None

    def oldest_step(self) -> int | None:
        return self._oldest()

    def current(self) -> StepRecord | None:
        step = self._shown_step()
        if step is None:
            return None
        record = self._record(step)
        if record is None:  # the file could not give it back (cut short, removed): the oldest in memory
            self._viewing = self._steps[0]
            record = self._record(self._steps[0])
        return record

    def _previous(self, step: int) -> int | None:
        """The step before `step` that can be shown, if any."""
        index = self._index(step)
        if index:
            return self._steps[index - 1]
        if self._pages is None or not self._steps or step > self._steps[0]:
            return None
        return step - 1 if self._record(step - 1) is not None else None

    def can_go_back(self) -> bool:
        step = self._shown_step()
        return step is not None and self._previous(step) is not None

    def back(self) -> None:
        step = self._shown_step()
        if step is not None:
            previous = self._previous(step)
            if previous is not None:
                self._viewing = previous

    def forward(self) -> bool:
        """One step newer; False when already at the newest record (nothing to move to)."""
        step = self._shown_step()
        if step is None or step >= self._steps[-1]:
            self._viewing = None
            return False
        index = self._index(step)
        following = step + 1 if index is None else self._steps[index + 1]
        self._viewing = None if following >= self._steps[-1] else following
        return True

    def recent(self, count: int) -> list[StepRecord]:
        """Up to `count` records ending at the one on screen."""
        records: list[StepRecord] = []
        step = self._shown_step()
        while step is not None and len(records) < count:
            record = self._record(step)
            if record is None:
                break
            records.append(record)
            step = self._previous(step)
        records.reverse()
        return records

    def kept_after(self, step: int | None) -> list[StepRecord]:
        """The records kept in memory newer than `step` (all of them when None), oldest first, for a
        view that follows the whole run (the timeline) rather than the step on screen."""
        start = 0 if step is None or not self._steps else bisect_left(self._steps, step + 1)
        cold = len(self._cold)
        return [self._hot[i - cold] if i >= cold else _unpack(self._cold[i]) for i in range(start, len(self._steps))]

    def position(self) -> tuple[int, int]:
        """(1-based index of the step on screen, steps that can be shown), counting from the oldest."""
        step, oldest = self._shown_step(), self._oldest()
        if step is None or oldest is None:
            return 0, 0
        index = self._index(step)
        beyond = self._steps[0] - oldest  # steps only the file has
        if beyond <= 0:
            return (1 if index is None else index + 1), len(self._steps)
        return (step - oldest + 1 if index is None else beyond + index + 1), beyond + len(self._steps)
