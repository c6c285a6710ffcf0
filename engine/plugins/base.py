"""Plugin API: hooks into scheduling, attention and KV appends, without touching engine code.

A plugin subclasses one (or more) of SchedulerPlugin, AttentionPlugin and CachePlugin. A plugin
whose hook raises is disabled on the spot; the error is carried in the StepRecord and the engine
goes on with the step as if the plugin were absent, so no request is ever corrupted.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from operator import attrgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..request import Request

ENTRY_POINT_GROUP = "cbtui.plugins"


class Plugin:
    """Common base: a name for records and error messages."""

    name = "plugin"

    def check_config(self, config) -> None:
        """Raises ValueError when the plugin cannot work with this EngineConfig."""

    def describe(self) -> str:
        """One line for the dashboard: the plugin and what it is doing."""
        return self.name


@dataclass
class SchedulerState:
    """What a scheduler plugin sees before the budget is allocated, and what it may change.

    `waiting` and `running` may be reordered (not added to or removed from): the scheduler takes
    decodes sorted by `decode_key`, prefills in `running` then `waiting` order, and preempts from
    the end of `running`. `budget` may be changed for this step.
    """

    step: int
    budget: int
    waiting: deque[Request]
    running: list[Request]
    # Default: least recently served decode first, so a decode cap never starves anyone.
    decode_key: Callable[[Request], Any] = field(default=attrgetter("last_scheduled_step"))
    reserved_tokens: int = 0
    reserved_for: set[int] = field(default_factory=set)  # request ids that may use the reserved slice
    annotations: list[str] = field(default_factory=list)

    def reserve(self, tokens: int, request_ids) -> None:
        """Keeps `tokens` of this step's budget for the given requests only."""
        self.reserved_tokens = max(0, min(int(tokens), self.budget))
        self.reserved_for = set(request_ids)

    def annotate(self, text: str) -> None:
        """A short note for the dashboard's step header, e.g. 'budget 256 -> 320 (adaptive)'."""
        self.annotations.append(str(text))


class SchedulerPlugin(Plugin):
    def before_step(self, state: SchedulerState) -> None:
        """Called after arrivals, before scheduling."""

    def after_step(self, state: SchedulerState, record) -> None:
        """Called with the step's StepRecord (it may add annotations to record.annotations)."""

    def on_request_completion(self, request) -> None:
        """Called once per finished request."""


class AttentionPlugin(Plugin):
    def wrap(self, layer_idx: int, attention):
        """Returns the attention function for this layer: `attention` itself, a wrapper, or a
        replacement with the same signature (q, k, v, batch) -> [T, heads, head_dim]."""
        return attention


class CachePlugin(Plugin):
    def attach(self, cache) -> None:
        """Called once when the engine is built, with its KV cache (e.g. to change its storage)."""

    def before_append(self, cache, layer: int, batch, k, v):
        """Called before this step's keys/values are stored; returns the (k, v) to store."""
        return k, v

    def after_append(self, cache, layer: int, batch) -> None:
        """Called once this step's keys/values are stored in `cache` for `layer`."""


def builtin_plugins() -> dict[str, type]:
    from .builtin import BUILTIN

    return dict(BUILTIN)


def load_plugin(spec: str, options: dict | None = None) -> Plugin:
    """A plugin from a built-in name, a `cbtui.plugins` entry point, or `module:Class`."""
    options = options or {}
    builtins = builtin_plugins()
    if spec in builtins:
        cls = builtins[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # whatever importing user code raises
            raise ValueError(f"plugin {spec!r} cannot be loaded: {exc}; give module:Class on the "
                             f"Python path") from None
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            raise ValueError(f"unknown plugin {spec!r}; built-in plugins: {', '.join(sorted(builtins))}, "
                             f"or an entry point in group {ENTRY_POINT_GROUP!r}, or module:Class")
        cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise ValueError(f"plugin {spec!r} is not a SchedulerPlugin, AttentionPlugin or CachePlugin class")
    try:
        return cls(**options)
    except ValueError as exc:
        raise ValueError(f"plugin {spec!r}: {exc}") from None
    except Exception as exc:  # e.g. TypeError for an unknown option
        raise ValueError(f"plugin {spec!r} cannot be created with options {options!r}: "
                         f"{type(exc).__name__}: {exc}") from None
