"""Asking the engine thread for something between two steps, and taking its answer on the UI thread.

`EngineController.between_steps` hands back a Future that the engine thread resolves; its done
callback runs on that thread (or at once, on this one, when the thread has stopped). Either way the
answer travels as a message, which Textual delivers on the app's own thread from any thread, so a
widget is only ever touched there. A failure is one line (the exception's message, control
characters made visible): the dashboard says it and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from textual.app import App
from textual.message import Message

from engine.records.text import visible


class EngineAnswer(Message):
    """The engine thread resolved a call: `then(result)` on success, else `failed(one line)`."""

    def __init__(self, future: Future, then: Callable[[Any], None], failed: Callable[[str], None]):
        super().__init__()
        self.future, self.then, self.failed = future, then, failed

    def deliver(self) -> None:
        try:
            result = self.future.result()
        except Exception as exc:  # the engine refused (ValueError) or the thread stopped: one line
            self.failed(one_line(exc))
            return
        self.then(result)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return visible(text.splitlines()[0])


def ask_engine(app: App, controller, call: Callable[[Any], Any], then: Callable[[Any], None],
               failed: Callable[[str], None]) -> None:
    """Runs `call(engine)` on the engine thread before the next step; `then` or `failed` runs on the
    app's thread with its answer (the app handles EngineAnswer by calling `deliver`)."""
    future = controller.between_steps(call)
    future.add_done_callback(lambda done: app.post_message(EngineAnswer(done, then, failed)))
