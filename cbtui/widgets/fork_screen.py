"""The `f` box: fork the run at the step on screen, with the changes B makes from the next step.

It says what each side runs, and takes B's changes as KEY=VALUE pairs (prefilled with the knobs
turned after this step, if any). Enter forks; escape cancels. The app checks the changes and opens
the compare view.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Static

from .type_ahead import TypeAheadScreen


class ForkScreen(TypeAheadScreen[str | None]):
    """Dismissed with the changes as typed, or None on escape."""

    FIELD = "#fork-changes"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    ForkScreen { align: center middle; }
    ForkScreen > Vertical {
        width: 90%; max-width: 90; height: auto; border: round $accent; padding: 0 1; background: $surface;
    }
    ForkScreen Static { height: auto; }
    """

    def __init__(self, step: int, changes: str, as_it_ran: str):
        """`changes`: the field's first text; `as_it_ran`: what A runs besides the scenario."""
        super().__init__()
        self.step, self._changes, self._as_it_ran = step, changes, as_it_ran

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = f"Fork at step {self.step} (enter opens the compare view, esc cancels)"
            yield Static(Text.assemble(("A ", "bold"), f"the run as it went to step {self.step}{self._as_it_ran}, "
                                       "then left alone.\n", ("B ", "bold"),
                                       f"the same to step {self.step}, then from step {self.step + 1} changed by:"))
            yield Input(self._changes, placeholder="KEY=VALUE ..., e.g. max_tokens_per_step=96", id="fork-changes",
                        select_on_focus=False)
            yield Static(id="fork-message")
            yield Static(Text("Both share steps 0.." + str(self.step) + " record for record; q in the compare "
                              "view comes back here.", style="dim"))

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
