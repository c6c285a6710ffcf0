"""The `a` box: a prompt and its max tokens, for a request that joins the run at the next step.

Enter in either field submits; escape cancels. The box refuses only what it can see itself (no
text, a max tokens that is not a whole number above 0), in a line under the fields, and keeps what
was typed; the engine's own refusals (a prompt too long for the context) come back as a line in
the dashboard.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, Static

from .type_ahead import TypeAheadScreen

DEFAULT_MAX_TOKENS = 32


class AddRequestScreen(TypeAheadScreen[tuple[str, int] | None]):
    """Dismissed with (text, max new tokens), or None on escape."""

    FIELD = "#add-prompt"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    AddRequestScreen { align: center middle; }
    AddRequestScreen > Vertical {
        width: 90%; max-width: 90; height: auto; border: round $accent; padding: 0 1; background: $surface;
    }
    AddRequestScreen Horizontal { height: auto; }
    AddRequestScreen Label { padding: 1 1 0 0; }
    AddRequestScreen #add-max { width: 12; }
    AddRequestScreen Static { height: auto; }
    """

    def __init__(self, chat: str, max_tokens: int = DEFAULT_MAX_TOKENS):
        """`chat`: how the text becomes the prompt (the model's chat template, or the text as it is)."""
        super().__init__()
        self._chat = chat
        self._max_tokens = max_tokens

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Add a request (enter adds, esc cancels)"
            yield Input(placeholder="the prompt", id="add-prompt")
            with Horizontal():
                yield Label("max tokens")
                yield Input(str(self._max_tokens), type="integer", id="add-max")
            yield Static(id="add-message")
            yield Static(Text(f"It joins at the next step; {self._chat}.", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#add-prompt", Input).focus()

    @on(Input.Submitted)
    def _submitted(self) -> None:
        text = self.query_one("#add-prompt", Input).value
        max_tokens = self.query_one("#add-max", Input).value.strip()
        problem = None
        if not text.strip():
            problem = "the prompt is empty: type some text"
        elif not max_tokens.isdigit() or int(max_tokens) < 1:
            problem = f"max tokens {max_tokens!r} must be a whole number above 0"
        if problem is not None:
            self.query_one("#add-message", Static).update(Text(problem, style="bold red"))
            return
        self.dismiss((text, int(max_tokens)))

    def action_cancel(self) -> None:
        self.dismiss(None)
