"""The header: what is running, which step is on screen, and whether the engine is moving."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from engine.records.text import visible

from ..render.colors import BAD, CALM, GOOD, NOTE, WARN
from ..render.formatting import human_rate


@dataclass(frozen=True)
class HeaderInfo:
    scenario: str
    engine: str  # model preset, device, attention backend, KV layout
    step: int | None  # the step on screen; None before the first record
    run_state: str  # "running", "paused", "finished", "failed", "starting", "idle" (cbtui api: no request)
    speed: str  # "4/s" or "max"
    running: int = 0
    waiting: int = 0
    finished: int = 0
    pending: int = 0
    preempted: int = 0  # preemptions in the run up to the step on screen
    tokens_per_second: float | None = None  # processed (prefill + decode) per engine second
    newest: int | None = None  # the newest step, while an older one is on screen (history)
    notes: tuple[str, ...] = ()  # plugin annotations and errors of the step on screen
    errors: tuple[str, ...] = ()
    run: str = ""  # what runs: the scheduling policy, the [compare] variant, plugins
    random_weights: bool = False  # a random preset runs (or ran, in a replay): the header says its text is noise


RUN_STATE_STYLE = {"running": f"bold {GOOD}", "paused": f"bold {WARN}", "finished": f"bold {CALM}",
                   "failed": f"bold {BAD}", "starting": "dim", "idle": f"bold {CALM}"}  # idle: cbtui api, no request
HISTORY_HINTS = ("history: → newer, space live", "history: → newer", "history")
# A random preset's outputs are noise: the longest of these that fits, after everything else on its line.
NOISE_HINTS = ("random weights: outputs are noise; --model smollm2 runs a real model",
               "outputs are noise: try --model smollm2", "try --model smollm2")


class StepHeader(Static):
    """Two lines, and a third for plugin notes and errors that do not fit beside the counts; `Step <n>`
    appears exactly so scripts and tests can find it. A random preset's header ends with NOISE_HINTS."""

    DEFAULT_CSS = """
    StepHeader { height: 2; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def show(self, info: HeaderInfo) -> None:
        width = self.size.width - 2  # less the padding; 0 before the first layout
        if (info, width) != getattr(self, "_shown", None):
            self._shown = (info, width)
            text = self.text_for(info, width if width > 0 else None)
            lines = text.plain.count("\n") + 1
            if self.styles.height is None or self.styles.height.value != lines:
                self.styles.height = lines  # a layout pass only when notes come or go
            self.update(text, layout=False)

    def on_resize(self) -> None:
        info = getattr(self, "_shown", (None,))[0]
        if info is not None:
            self.show(info)

    @staticmethod
    def text_for(info: HeaderInfo, width: int | None = None) -> Text:
        """The scenario title, the engine label, notes and errors come from files (a scenario, a
        recording) or plugins: their control characters are shown, never sent to the terminal.
        With `width`, a title that does not fit beside the engine goes at the end of the second line
        where that has room, else before the engine label (which is then what gets cut), and notes and
        errors that would be cut beside the counts get a line of their own."""
        step = "Step –" if info.step is None else f"Step {info.step}"
        if info.newest is not None:
            step += f" of {info.newest}"  # step numbers both: one way of counting
        head = Text.assemble(
            (step, "bold reverse"), " ", (f"{info.run_state}", RUN_STATE_STYLE.get(info.run_state, "")),
            (f" @ {info.speed}" if info.run_state == "running" else "", "dim"),
            ("  " + visible(info.run) if info.run else "", "bold"),
        )
        engine = Text(visible(info.engine), style="dim")
        title = Text(visible(info.scenario), style="bold")
        # Prefill and decode tokens per engine second: 'total', as the bench says; the metrics screen (m)
        # charts output tokens per second apart, and names this figure too.
        rate = "–" if info.tokens_per_second is None else human_rate(info.tokens_per_second)

        def fits(text: Text) -> bool:
            return width is None or text.cell_len <= width

        def counts(gap: str) -> Text:
            line = Text.assemble(
                ("running ", "dim"), str(info.running), (f"{gap}waiting ", "dim"), str(info.waiting),
                (f"{gap}finished ", "dim"), str(info.finished), (f"{gap}pending ", "dim"), str(info.pending),
            )
            if info.preempted:
                line.append_text(Text.assemble((f"{gap}preempted ", "dim"), (str(info.preempted), f"bold {BAD}")))
            line.append_text(Text.assemble("  ", (f"{rate} total tok/s", "bold")))
            return line

        # The longest history wording that fits, the counts closer together before a shorter wording.
        hints = [(h, f"bold {NOTE}") for h in HISTORY_HINTS] if info.newest is not None else [("", "")]
        forms = [[Text.assemble(counts(gap), ("  " + hint if hint else "", style)) for gap in ("  ", " ")]
                 for hint, style in hints]
        line2 = next((t for form in forms for t in form if fits(t)), forms[-1][-1])
        line1 = Text.assemble(head, "  ", engine, "  ", title)
        if not fits(line1):
            same_hint = next(form for form in forms if line2 in form)
            beside = next((Text.assemble(t, "  ", title) for t in same_hint if t.cell_len <= line2.cell_len
                           and fits(Text.assemble(t, "  ", title))), None)
            if beside is not None and fits(Text.assemble(head, "  ", engine)):
                line1, line2 = Text.assemble(head, "  ", engine), beside  # the second line had room
            elif fits(Text.assemble(head, "  ", title)):
                line1 = Text.assemble(head, "  ", title, "  ", engine)  # the engine label is what gets cut
        extra = Text()
        for error in info.errors:
            extra.append("  " + visible(error), style=f"bold {BAD}")
        for note in info.notes:
            extra.append("  " + visible(note), style=NOTE)
        lines = [line1, line2]
        if extra and width is not None and line2.cell_len + extra.cell_len > width:
            lines.append(extra[2:])
        else:
            line2.append_text(extra)
        if info.random_weights:  # last, and never a line of its own: at 80x24 every row is a panel's
            last = lines[-1]
            noise = [h for h in NOISE_HINTS if width is None or last.cell_len + 2 + len(h) <= width]
            if noise:
                last.append("  " + noise[0], style="dim")
        for line in lines:
            line.no_wrap, line.overflow = True, "ellipsis"
        return Text("\n").join(lines)  # (cut, not wrapped, on screen too: StepHeader's CSS, in compare as well)
