"""Keys typed faster than a box opens go into the box, never to the dashboard behind it.

A burst of keys (`a`, a prompt, tab, a number, enter: one read of the terminal) is dispatched
before the box exists: each key goes to the widget focused then, the dashboard's requests table,
and bubbles up to the app only after `a` has opened the box. There the letters were lost, tab moved
the focus before the field had it, and enter submitted an empty box. The app hands such keys to
the box (`type_ahead`), in the order they came: a printable key goes into the focused field (into
a field that tab just moved to, replacing its text, as selecting it on focus does), tab and
shift+tab move between the fields, enter submits. Keys that come before the fields exist wait for
them. The box itself takes keys that reach it with nothing focused the same way.
"""

from __future__ import annotations

from typing import TypeVar

from textual import events
from textual.screen import ModalScreen
from textual.widgets import Input

Result = TypeVar("Result")
MOVES = ("enter", "tab", "shift+tab")


class TypeAheadScreen(ModalScreen[Result]):
    FIELD = "Input"  # the selector of the field that takes what is typed first

    def __init__(self) -> None:
        super().__init__()
        self._early: list[events.Key] = []  # typed before the fields were there
        self._tabbed_to: Input | None = None  # the next letter replaces its text (select on focus)

    def type_ahead(self, event: events.Key) -> bool:
        """Takes a key typed for this box; False for one it leaves alone (escape, arrows)."""
        if not (event.is_printable and event.character) and event.key not in MOVES:
            return False
        if self._early or not self.query(self.FIELD):
            self._early.append(event)
        else:
            self._take(event)
        return True

    def _take(self, event: events.Key) -> None:
        field = self.focused if isinstance(self.focused, Input) else self.query(self.FIELD).first(Input)
        if event.key == "enter":
            self.run_worker(field.action_submit())
        elif event.key in ("tab", "shift+tab"):
            (self.focus_next if event.key == "tab" else self.focus_previous)()
            self._tabbed_to = self.focused if isinstance(self.focused, Input) else None
        else:
            field.focus()
            if field is self._tabbed_to and field.select_on_focus:
                field.value = ""
            self._tabbed_to = None
            field.insert_text_at_cursor(event.character or "")

    def on_mount(self) -> None:  # after the subclass's own (it focuses the field)
        self.call_after_refresh(self._flush)

    def _flush(self) -> None:
        while self._early:
            self._take(self._early.pop(0))

    def on_key(self, event: events.Key) -> None:
        # A key that reached the screen: nothing took it (nothing focused yet, or a widget that
        # takes no letters). Enter and tab with something focused are that widget's (its bindings).
        if self.focused is not None and event.key in MOVES:
            return
        if self.type_ahead(event):
            event.stop()
            event.prevent_default()
