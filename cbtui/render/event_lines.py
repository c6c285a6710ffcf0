"""`--events`: a headless run told as event lines, each within 80 columns, under its step line."""

from __future__ import annotations

import textwrap

from engine.records import StepRecord
from engine.records.events import NOTE, WAITING, step_events
from engine.records.text import visible

REPEATS = (WAITING, NOTE)  # told again only when they change: a long stall would fill the screen
WIDTH = 80
INDENT = "    "


def event_lines(record: StepRecord, previous: StepRecord | None = None, width: int = WIDTH) -> list[str]:
    """The step's events, one per line (wrapped, indented, never past `width`). A queue that waits
    for the same reason, or a plugin note, as in the step before is not told again."""
    told_before = {e.text for e in step_events(previous) if e.kind in REPEATS} if previous else set()
    lines: list[str] = []
    for event in step_events(record, previous):
        if event.kind in REPEATS and event.text in told_before:
            continue
        lines += textwrap.wrap(visible(event.text), width, initial_indent=INDENT, subsequent_indent=INDENT + "  ")
    return lines
