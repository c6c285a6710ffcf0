"""Textual's command palette, closed once.

Keys that arrive in one burst (`tmux send-keys C-p Enter Enter`, a fast typist, a paste) all reach the
palette before it has gone: the second Enter selected the command again, so the palette dismissed itself
a second time and popped the screen under it, the dashboard's own (ScreenStackError: the app crashed),
and would have run the command twice. Once this palette is closing, what selects is dropped.
"""

from __future__ import annotations

from textual import on
from textual.await_complete import AwaitComplete
from textual.command import CommandPalette
from textual.message import Message
from textual.widgets import Button, Input, OptionList


class OnceCommandPalette(CommandPalette):
    _selection_done = False  # (not `_closing`: every message pump has one)

    def dismiss(self, result: None = None) -> AwaitComplete:
        self._selection_done = True
        return super().dismiss(result)

    # Runs before CommandPalette's own handlers of these messages (a subclass is first in the MRO);
    # prevent_default keeps them from running at all.
    @on(Input.Submitted)
    @on(Button.Pressed)
    @on(OptionList.OptionSelected)
    def _drop_once_closing(self, event: Message) -> None:
        if self._selection_done:
            event.prevent_default()
            event.stop()
