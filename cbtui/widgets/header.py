"""The header: what is running, which step is on screen, and whether the engine is moving."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from engine.records.text import visible

from ..formatting import human_rate


@dataclass(frozen=True)
class HeaderInfo:
    scenario: str
    engine: str  # model preset, device, attention backend, KV layout
    step: int | None  # the step on screen; None before the first record
    run_state: str  # "running", "paused", "finished", "failed", "starting"
    speed: str  # "4/s" or "max"
    running: int = 0
    waiting: int = 0
    finished: int = 0
    pending: int = 0
    preempted: int = 0  # preemptions in the run up to the step on screen
    tokens_per_second: float | None = None
    history: str = ""  # "history 3/40" while looking at a past step
    notes: tuple[str, ...] = ()  # plugin annotations and errors of the step on screen
    errors: tuple[str, ...] = ()


RUN_STATE_STYLE = {"running": "bold green", "paused": "bold yellow", "finished": "bold cyan",
                   "failed": "bold red", "starting": "dim"}


class StepHeader(Static):
    """Two lines; `Step <n>` appears exactly so scripts and tests can find it."""

    DEFAULT_CSS = """
    StepHeader { height: 2; padding: 0 1; }
    """

    def show(self, info: HeaderInfo) -> None:
        if info != getattr(self, "_info", None):
            self._info = info
            self.update(self.text_for(info), layout=False)  # fixed height: no layout pass

    @staticmethod
    def text_for(info: HeaderInfo) -> Text:
        """The scenario title, the engine label, notes and errors come from files (a scenario, a
        recording) or plugins: their control characters are shown, never sent to the terminal."""
        step = "Step –" if info.step is None else f"Step {info.step}"
        # Step and run state first: on a narrow terminal the scenario name is what gets cut.
        line1 = Text.assemble(
            (step, "bold reverse"), " ", (f"{info.run_state}", RUN_STATE_STYLE.get(info.run_state, "")),
            (f" @ {info.speed}" if info.run_state == "running" else "", "dim"), "  ",
            (visible(info.scenario), "bold"), "  ", (visible(info.engine), "dim"),
        )
        rate = "– tok/s" if info.tokens_per_second is None else f"{human_rate(info.tokens_per_second)} tok/s"
        line2 = Text.assemble(
            ("running ", "dim"), str(info.running), ("  waiting ", "dim"), str(info.waiting),
            ("  finished ", "dim"), str(info.finished), ("  pending ", "dim"), str(info.pending),
        )
        if info.preempted:
            line2.append_text(Text.assemble(("  preempted ", "dim"), (str(info.preempted), "bold red")))
        line2.append_text(Text.assemble("  ", (rate, "bold")))
        for error in info.errors:
            line2.append("  " + visible(error), style="bold red")
        for note in info.notes:
            line2.append("  " + visible(note), style="magenta")
        if info.history:
            line2.append("  ")
            line2.append(info.history, style="bold magenta")
        line1.no_wrap = line2.no_wrap = True
        line1.overflow = line2.overflow = "ellipsis"
        return Text("\n").join([line1, line2])
