"""Shown when the engine raised: the message, and how to carry on. The UI stays alive."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.records.text import visible


class ErrorPanel(Static):
    DEFAULT_CSS = """
    ErrorPanel { display: none; height: auto; border: heavy $error; padding: 0 1; color: $text; }
    ErrorPanel.-visible { display: block; }
    """

    def show_error(self, message: str | None) -> None:
        if message == getattr(self, "_message", None):
            return
        self._message = message
        self.set_class(message is not None, "-visible")
        if message is not None:
            self.border_title = "engine error"
            # An engine's or a plugin's message may quote a file: its control characters are shown.
            self.update(Text.assemble((visible(message, newlines=True), "bold"), "\n",
                                      ("The engine stopped; earlier steps stay browsable (← →). "
                                       "Press r to restart the scenario, q to quit.", "dim")))
