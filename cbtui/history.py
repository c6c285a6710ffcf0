"""Recent StepRecords, bounded in memory, and which one is on screen (the newest, or a past one)."""

from __future__ import annotations

from collections import deque

from engine.records import StepRecord


class History:
    def __init__(self, limit: int = 1000):
        self._records: deque[StepRecord] = deque(maxlen=limit)
        self._viewing: int | None = None  # step number on screen; None follows the newest

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()
        self._viewing = None

    def append(self, record: StepRecord) -> None:
        self._records.append(record)

    @property
    def live(self) -> bool:
        return self._viewing is None

    def go_live(self) -> None:
        self._viewing = None

    def _index(self) -> int | None:
        if not self._records:
            return None
        if self._viewing is None:
            return len(self._records) - 1
        # Steps in the window are consecutive; a step that fell out shows the oldest kept.
        return min(max(self._viewing - self._records[0].step, 0), len(self._records) - 1)

    def current(self) -> StepRecord | None:
        index = self._index()
        return None if index is None else self._records[index]

    def can_go_back(self) -> bool:
        index = self._index()
        return bool(index)

    def back(self) -> None:
        index = self._index()
        if index:
            self._viewing = self._records[index - 1].step

    def forward(self) -> bool:
        """One step newer; False when already at the newest record (nothing to move to)."""
        index = self._index()
        if index is None or index >= len(self._records) - 1:
            self._viewing = None
            return False
        if index + 1 == len(self._records) - 1:
            self._viewing = None
        else:
            self._viewing = self._records[index + 1].step
        return True

    def recent(self, count: int) -> list[StepRecord]:
        """Up to `count` records ending at the one on screen."""
        index = self._index()
        if index is None:
            return []
        start = max(0, index - count + 1)
        return [self._records[i] for i in range(start, index + 1)]

    def newest(self) -> StepRecord | None:
        """The newest record kept, whatever is on screen."""
        return self._records[-1] if self._records else None

    def position(self) -> tuple[int, int]:
        """(1-based index of the record on screen, records kept)."""
        index = self._index()
        return (0 if index is None else index + 1), len(self._records)
