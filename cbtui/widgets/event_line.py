"""The event line: the step on screen told in words ("request 3 preempted (needs 5 blocks, 3
free)"), from its record alone, so it follows history (← →). When a breakpoint paused the run on
this step, its first line says which one and why."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.records import StepRecord
from engine.records.events import NOTE, PLUGIN_ERROR, PREEMPTED, RECOMPUTE, WAITING, step_events
from engine.records.text import visible

KIND_STYLE = {PREEMPTED: "bold red", RECOMPUTE: "bold", PLUGIN_ERROR: "bold red", WAITING: "dim", NOTE: "magenta"}


def event_text(record: StepRecord | None, previous: StepRecord | None = None, paused_by: str | None = None) -> Text:
    """`paused_by`: the breakpoint that paused the run on this step ("preempt"), with the event that
    fired it, or None."""
    text = Text()
    if record is None:
        return text.append("waiting for the first step", style="dim")
    events = step_events(record, previous)
    if paused_by:
        # "preempt hit: request 3 preempted (...)": the event is told just after, so only once
        spec, _, detail = paused_by.partition(" hit: ")
        told = detail in {e.text for e in events}
        events.sort(key=lambda e: e.text != detail)  # the event that fired first: a short line shows it
        text.append(f"paused: breakpoint {visible(spec)} hit" + ("" if told else f": {visible(detail)}"),
                    style="bold yellow")
        text.append(" · ", style="dim")
    text.append(f"step {record.step}: ", style="bold")
    if not events:
        n_decodes = sum(i.kind == "decode" for i in record.items)
        n_chunks = len(record.items) - n_decodes
        text.append(f"{n_decodes} decode{'s' * (n_decodes != 1)}, {n_chunks} prefill chunk{'s' * (n_chunks != 1)}; "
                    "nobody joined, finished or was preempted", style="dim")
    for i, event in enumerate(events):
        if i:
            text.append(" · ", style="dim")
        # A plugin's error message is a plugin's text: its control characters are shown.
        text.append(visible(event.text), style=KIND_STYLE.get(event.kind, ""))
    return text


class EventLine(Static):
    """Two lines on small terminals, three on large ones: a fixed height, so the panels below do not
    jump from step to step with the length of the story."""

    SCOPED_CSS = False  # the compact rule names the screen's class
    DEFAULT_CSS = """
    EventLine { height: 3; padding: 0 1; }
    Screen.-compact EventLine { height: 2; }
    """

    _text = Text()

    def show(self, record: StepRecord | None, previous: StepRecord | None = None,
             paused_by: str | None = None) -> None:
        key = (None if record is None else record.step, id(record), paused_by)
        if key != getattr(self, "_key", None):
            self._key = key
            self._text = event_text(record, previous, paused_by)
            self.refresh()

    def render(self) -> Text:
        width, height = self.content_size
        return fit_lines(self._text, width, height, self.app.console)


def fit_lines(text: Text, width: int, height: int, console) -> Text:
    """The text wrapped to `width`; when it needs more than `height` lines, the last one shown ends in
    '…', so a story cut short says so (? and the headless --events show it whole)."""
    if width <= 0 or height <= 0:
        return text
    lines = text.wrap(console, width)
    if len(lines) <= height:
        return text
    kept = list(lines)[:height]
    kept[-1].truncate(width - 1)
    kept[-1].rstrip()
    kept[-1].append("…", style="dim")
    return Text("\n").join(kept)
