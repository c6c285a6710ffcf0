"""The running difference between two runs of one scenario (`cbtui compare`): a line per run with
its figures at the step on screen, and a line with the second minus the first, under a title that
names the columns. Three lines that fit 80 columns."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from engine.records.summary import RunTotals
from engine.records.text import visible

NAME_WIDTH = 14


@dataclass(frozen=True)
class RunFigures:
    """One run's figures after a step: what a headless run's summary says at its end."""

    steps: int = 0
    finished: int = 0
    ttft_mean: float | None = None  # over the requests that have their first token
    padding: int = 0  # static batching: slot-steps held by finished requests
    preemptions: int = 0

    @classmethod
    def of(cls, totals: RunTotals) -> RunFigures:
        ttfts = [v.ttft_steps for v in totals.views.values() if v.ttft_steps is not None]
        return cls(steps=totals.steps, finished=len(totals.finish_step),
                   ttft_mean=sum(ttfts) / len(ttfts) if ttfts else None,
                   padding=totals.padding_slot_steps, preemptions=totals.preemptions)


def _ttft(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _signed(value: float, digits: int = 0) -> str:
    text = f"{value:+.{digits}f}"
    return "±0" if float(text) == 0 else text.replace("-", "−")


# (name, width): the columns, right-aligned under the panel's title, which names them.
COLUMNS = (("steps", 7), ("finished", 10), ("mean TTFT", 11), ("padding slot-steps", 20), ("preempted", 11))
TITLE = "Difference".ljust(NAME_WIDTH) + "".join(name.rjust(width) for name, width in COLUMNS)


def _row(name: str, values: tuple[str, ...], style: str = "bold") -> Text:
    row = Text(visible(name)[:NAME_WIDTH - 1].ljust(NAME_WIDTH), style=style)
    for value, (_, width) in zip(values, COLUMNS, strict=True):
        row.append(value.rjust(width))
    return row


def figure_line(name: str, f: RunFigures, requests: int) -> Text:
    return _row(name, (str(f.steps), f"{f.finished}/{requests}", _ttft(f.ttft_mean), str(f.padding),
                       str(f.preemptions)))


def difference_line(a: RunFigures, b: RunFigures) -> Text:
    ttft = "–" if a.ttft_mean is None or b.ttft_mean is None else _signed(b.ttft_mean - a.ttft_mean, 1)
    return _row("B − A", (_signed(b.steps - a.steps), _signed(b.finished - a.finished), ttft,
                          _signed(b.padding - a.padding), _signed(b.preemptions - a.preemptions)), "bold magenta")


class RunDifference(Static):
    DEFAULT_CSS = """
    RunDifference { height: 3; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def on_mount(self) -> None:
        self.border_title = TITLE

    def show(self, names: tuple[str, str], figures: tuple[RunFigures, RunFigures], requests: int) -> None:
        (name_a, name_b), (a, b) = names, figures
        text = Text("\n").join([figure_line(f"A {name_a}", a, requests), figure_line(f"B {name_b}", b, requests),
                                difference_line(a, b)])
        text.no_wrap = True
        text.overflow = "ellipsis"
        if text != getattr(self, "_text", None):
            self._text = text
            self.update(text, layout=False)
