"""Keys typed faster than a box opens go into its field, never to the dashboard behind it.

A burst of keys (`aquit or restart` + enter, one read of the terminal) is dispatched before the
box exists: each key goes to the widget focused then, the dashboard's requests table, and bubbles
up to the app only after `a` has opened the box. Unclaimed there, the letters were lost (and
enter submitted an empty box). The app hands such keys to the box (`type_ahead`), and so does the
box for keys that reach it with its field not focused yet: a printable key goes into the field,
enter submits it; keys that come before the field exists wait for it.
"""

from __future__ import annotations

from typing import TypeVar

from textual import events
from textual.screen import ModalScreen
from textual.widgets import Input

Result = TypeVar("Result")
ENTER = "\r"


class TypeAheadScreen(ModalScreen[Result]):
    FIELD = "Input"  # the selector of the field that takes what is typed

    def __init__(self) -> None:
        super().__init__()
        self._early: list[str] = []  # typed before the field was there

    def type_ahead(self, event: events.Key) -> bool:
        """Takes a key meant for this box; False for one it leaves alone (escape, tab, arrows)."""
        if event.is_printable and event.character:
            typed = event.character
        elif event.key == "enter" and self.focused is None:  # a focused widget's enter binding has it
            typed = ENTER
        else:
            return False
        fields = self.query(self.FIELD)
        if self._early or not fields:
            self._early.append(typed)
        elif typed == ENTER:
            self.run_worker(fields.first(Input).action_submit())
        else:
            self._insert(fields.first(Input), typed)
        return True

    @staticmethod
    def _insert(field: Input, typed: str) -> None:
        field.focus()
        field.insert_text_at_cursor(typed)

    def on_mount(self) -> None:  # after the subclass's own (it focuses the field)
        self.call_after_refresh(self._flush)

    async def _flush(self) -> None:
        field = self.query_one(self.FIELD, Input)
        while self._early:
            typed = self._early.pop(0)
            if typed == ENTER:
                await field.action_submit()
            else:
                self._insert(field, typed)

    def on_key(self, event: events.Key) -> None:
        # A key that reaches the screen: nothing took it (its field not focused yet, or a table that
        # takes no letters).
        if self.type_ahead(event):
            event.stop()
            event.prevent_default()
