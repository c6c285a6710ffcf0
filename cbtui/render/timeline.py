"""The per-request timeline: a row per request, a column per step, one glyph for what the request
did in that step (the picture every continuous-batching explainer draws: requests join, prefill in
chunks, decode a token a step, are preempted, and leave while the others run on).

Built from StepRecords alone, one record at a time, and bounded: it keeps the newest `max_steps`
columns, and a column holds only the requests alive in its step.

Each state has its own glyph, so the picture reads the same without colour (NO_COLOR): the colours
only repeat what the glyphs say.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import islice

from engine.records import StepRecord

MAX_STEPS = 5000  # columns kept: a long run's timeline scrolls back this far


@dataclass(frozen=True)
class CellKind:
    name: str
    glyph: str
    meaning: str  # for the legend
    style: str  # a Rich style for colour terminals; the glyph says the same without it


WAITING = CellKind("waiting", "·", "waiting", "dim")
PREFILL = CellKind("prefill", "▒", "prefill", "yellow")
RECOMPUTE = CellKind("recompute", "↺", "recompute", "magenta")
DECODE = CellKind("decode", "█", "decode", "green")
DRAFTS = CellKind("drafts", "▙", "decode+drafts", "bright_green")
PREEMPTED = CellKind("preempted", "×", "preempted", "bold red")
FINISHED = CellKind("finished", "✓", "finished", "bold cyan")
ABORTED = CellKind("aborted", "⊘", "aborted", "bold red")
KINDS = (WAITING, PREFILL, RECOMPUTE, DECODE, DRAFTS, PREEMPTED, FINISHED, ABORTED)
BY_GLYPH = {kind.glyph: kind for kind in KINDS}


def step_cells(record: StepRecord) -> dict[int, str]:
    """request id -> the glyph of what it did in this step; requests not yet arrived have none."""
    ran = {item.request_id: item for item in record.items}
    finished, preempted, aborted = set(record.finished), set(record.preempted), set(record.aborted)
    cells: dict[int, str] = {}
    for view in record.requests:
        rid = view.id
        if rid in aborted:
            kind = ABORTED
        elif rid in finished:
            kind = FINISHED  # its last token came in this step
        elif rid in preempted or (rid not in ran and view.state == "preempted"):
            kind = PREEMPTED
        elif rid in ran:
            item = ran[rid]
            if item.kind == "prefill":
                kind = RECOMPUTE if view.num_preemptions else PREFILL
            else:
                kind = DRAFTS if item.drafts else DECODE
        elif view.state in ("waiting", "decode", "prefill"):  # queued, or not scheduled this step
            kind = WAITING
        else:  # pending (not arrived), or a state this picture has no glyph for
            continue
        cells[rid] = kind.glyph
    return cells


class Timeline:
    """The columns of the steps seen so far (the newest `max_steps`), in step order."""

    def __init__(self, max_steps: int = MAX_STEPS):
        self._max = max(1, max_steps)
        self._columns: deque[tuple[int, dict[int, str]]] = deque()
        self._seen: dict[int, int] = {}  # request id -> the kept columns it appears in

    def clear(self) -> None:
        self._columns.clear()
        self._seen.clear()

    def add(self, record: StepRecord) -> None:
        """The next step (a step at or before the newest starts the timeline over: a restart)."""
        if self._columns and record.step <= self._columns[-1][0]:
            self.clear()
        cells = step_cells(record)
        self._columns.append((record.step, cells))
        for rid in cells:
            self._seen[rid] = self._seen.get(rid, 0) + 1
        if len(self._columns) > self._max:  # the oldest column goes, and a request seen only there
            for rid in self._columns.popleft()[1]:
                self._seen[rid] -= 1
                if not self._seen[rid]:
                    del self._seen[rid]

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self._columns]

    @property
    def newest_step(self) -> int | None:
        return self._columns[-1][0] if self._columns else None

    def requests(self) -> list[int]:
        """Every request that appears, by id (the order they came in)."""
        return sorted(self._seen)

    def __len__(self) -> int:
        return len(self._columns)

    def row(self, request_id: int, first: int, count: int) -> str:
        """The glyphs of `request_id` in columns first .. first + count - 1 (a space: not alive then)."""
        return "".join(cells.get(request_id, " ") for _, cells in islice(self._columns, first, first + count))


def legend() -> list[tuple[str, str, str]]:
    """(glyph, meaning, style) of each kind, in the order the legend shows them."""
    return [(kind.glyph, kind.meaning, kind.style) for kind in KINDS]
