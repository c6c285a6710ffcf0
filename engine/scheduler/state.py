"""SchedulerState: the scheduler's queues and budget for one step, as scheduler plugins see and change them.

It belongs to the scheduler (which builds it every step and schedules from it); the plugin API
(plugins/base.py) hands it to SchedulerPlugin.before_step and re-exports it for plugin authors.
Plain Python, like the scheduler.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from ..requests.request import Request


@dataclass
class SchedulerState:
    """What a scheduler plugin sees before the budget is allocated, and what it may change.

    `waiting` and `running` hold ReadOnlyRequest views. They may be reordered (not added to or
    removed from): the scheduler takes decodes sorted by `decode_key` (called with views; its
    values must be comparable), prefills in `running` then `waiting` order, and preempts from the
    end of `running`. `budget` may be changed for this step, a slice of it reserved, notes added.
    The host checks all of that after each plugin's hook and undoes a plugin that broke it.
    """

    step: int
    budget: int
    waiting: deque[Any]  # the scheduler's requests; ReadOnlyRequest views while plugins run
    running: list[Any]
    # Default: least recently served decode first, so a decode cap never starves anyone.
    decode_key: Callable[[Request], Any] = field(default=attrgetter("last_scheduled_step"))
    reserved_tokens: int = 0
    reserved_for: set[int] = field(default_factory=set)  # request ids that may use the reserved slice
    annotations: list[str] = field(default_factory=list)
    # Speculative decoding: request id -> the drafts it may verify this step (k; 0: none), for the
    # requests a plugin names; the others take the config's speculation.num_speculative_tokens.
    speculative_tokens: dict[int, int] = field(default_factory=dict)

    def speculate(self, request_id: int, k: int) -> None:
        """Sets the request's k for this step (at most the engine's num_speculative_tokens counts)."""
        if type(k) is not int or k < 0:
            raise ValueError(f"k={k!r} must be an integer >= 0")
        self.speculative_tokens[int(request_id)] = k

    def reserve(self, tokens: int, request_ids) -> None:
        """Keeps `tokens` of this step's budget for the given requests only."""
        self.reserved_tokens = max(0, min(int(tokens), self.budget))
        self.reserved_for = set(request_ids)

    def annotate(self, text: str) -> None:
        """A short note for the dashboard's step header, e.g. 'budget 256 -> 320 (adaptive)'."""
        self.annotations.append(str(text))
