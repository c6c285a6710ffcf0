"""The `b` screen: list the run's breakpoints, add one by its spec, or clear them all."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from ..run.breakpoints import FORMS, Breakpoints, parse


class BreakpointScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "Close")]

    DEFAULT_CSS = """
    BreakpointScreen { align: center middle; }
    BreakpointScreen > Vertical {
        width: 90%; max-width: 90; height: auto; border: round $accent; padding: 0 1; background: $surface;
    }
    BreakpointScreen Static { height: auto; }
    """

    def __init__(self, breakpoints: Breakpoints):
        super().__init__()
        self.breakpoints = breakpoints

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Breakpoints (esc to close)"
            yield Static(id="bp-list")
            yield Input(placeholder="preempt, step:40, kv-free<4 ... (enter adds; 'clear' clears)", id="bp-input")
            yield Static(id="bp-message")
            yield Static(Text(f"Forms: {FORMS}. The run pauses on the step where one fires.", style="dim"))

    def on_mount(self) -> None:
        self._show_list()
        self.query_one(Input).focus()

    def _show_list(self) -> None:
        specs = self.breakpoints.specs()
        self.query_one("#bp-list", Static).update(
            Text.assemble(("set: ", "bold"), ", ".join(specs) if specs else "none"))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        message = self.query_one("#bp-message", Static)
        if not text:
            self.dismiss()
            return
        if text.lower() == "clear":
            self.breakpoints.clear()
            message.update("cleared")
        else:
            try:
                bp = parse(text)
            except ValueError as exc:  # BreakpointError, or anything else a spec trips: said, never raised
                message.update(Text(str(exc), style="bold red"))
                return
            added = self.breakpoints.add(bp)
            message.update(f"added {bp.spec}" if added else f"{bp.spec} is set already")
        event.input.value = ""
        self._show_list()

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
