"""Plugin API: hooks into scheduling, attention and KV appends, without touching engine code.

A plugin subclasses one (or more) of SchedulerPlugin, AttentionPlugin and CachePlugin. A plugin
whose hook raises is disabled on the spot; the error is carried in the StepRecord and the engine
goes on with the step as if the plugin were absent (host.py says what is checked). A plugin that
raises SystemExit or KeyboardInterrupt ends the run with a PluginAbort naming it and the hook.

Where a plugin comes from (a built-in name, an entry point, `module:Class`) is loader.py.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..requests.request import Request
from ..scheduler.state import SchedulerState

MAX_MESSAGE = 300  # characters of a plugin's error message kept in a record or an error line


def one_line(text: object) -> str:
    """A plugin's message as one bounded line (its text is the plugin's, not ours)."""
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE - 3] + "..."


def describe_exception(exc: BaseException) -> str:
    text = one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PluginAbort(Exception):
    """A plugin raised SystemExit, KeyboardInterrupt or another exception that is not an Exception.

    The run cannot go on as if the plugin were absent (the user may have pressed Ctrl-C in it, or
    it asked to exit), so it ends: the CLI prints the message as one line and exits with
    `exit_code`, 130 for KeyboardInterrupt (as for Ctrl-C), 2 otherwise. The engine that raised it
    is left mid-step and must not be stepped again."""

    def __init__(self, plugin: str, hook: str, exc: BaseException):
        self.plugin, self.hook = plugin, hook
        self.exit_code = 130 if isinstance(exc, KeyboardInterrupt) else 2
        super().__init__(f"plugin {plugin} stopped the run: {hook} raised {describe_exception(exc)}")


class Plugin:
    """Common base: a name for records and error messages."""

    name = "plugin"

    def check_config(self, config) -> None:
        """Raises ValueError when the plugin cannot work with this EngineConfig."""

    def describe(self) -> str:
        """One line for the dashboard: the plugin and what it is doing."""
        return self.name


class ReadOnlyRequest:
    """A request as a plugin sees it: every field and property of Request can be read (token lists
    as tuples), nothing can be set, so a plugin's mistake cannot change a request's tokens or
    progress. The engine maps a view back to its request; views are made afresh each step."""

    __slots__ = ("_ReadOnlyRequest__request",)

    def __init__(self, request: Request):
        object.__setattr__(self, "_ReadOnlyRequest__request", request)

    def __getattr__(self, name: str) -> Any:
        if name not in _READABLE:
            raise AttributeError(f"a request has no readable attribute {name!r}")
        value = getattr(self.__request, name)
        return tuple(value) if isinstance(value, list) else value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"requests are read-only to plugins (setting {name!r}); reorder "
                             f"state.waiting / state.running instead")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"requests are read-only to plugins (deleting {name!r})")

    def __repr__(self) -> str:
        return f"ReadOnlyRequest(id={self.__request.id}, state={self.__request.state.value})"


def _readable() -> frozenset[str]:
    properties = {name for name, value in vars(Request).items() if isinstance(value, property)}
    return frozenset({f.name for f in fields(Request)} | properties | {"token_slice", "phase"})


_READABLE = _readable()


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

    def attention_window(self) -> list[int] | None:
        """[sinks, window] when the plugin narrows the mask to a sliding window (each step's record
        says it, so the mask panel draws the band); None: full causal attention."""
        return None


class CachePlugin(Plugin):
    def attach(self, cache) -> None:
        """Called once when the engine is built, with its KV cache (e.g. to change its storage)."""

    def before_append(self, cache, layer: int, batch, k, v):
        """Called before this step's keys/values are stored; returns the (k, v) to store."""
        return k, v

    def after_append(self, cache, layer: int, batch) -> None:
        """Called once this step's keys/values are stored in `cache` for `layer`."""

    def release_blocks(self, blocks, items) -> None:
        """Called after each step's forward pass with the scheduler's block manager and the step's
        ScheduledItems: give back blocks no query will read again (`blocks.evict(request, index)`)."""


def plugin_name(plugin: Plugin) -> str:
    """The plugin's `name`, checked: a non-empty string of at most 60 characters, one line."""
    try:
        name = plugin.name
    except Exception:  # a property that raises: reported as a bad name below
        name = None
    if not isinstance(name, str) or not name or len(name) > 60 or name != one_line(name):
        raise ValueError(f"plugin class {type(plugin).__name__}: name must be a one-line string of "
                         f"1 to 60 characters, got {name!r:.80}")
    return name


def check_plugin_config(plugin: Plugin, config) -> None:
    """Runs the plugin's check_config: a refusal or a failure is a one-line ValueError."""
    name = plugin_name(plugin)
    try:
        plugin.check_config(config)
    except ValueError as exc:
        raise ValueError(one_line(exc) or f"plugin {name}: check_config refused the configuration") from None
    except Exception as exc:
        raise ValueError(f"plugin {name}: check_config raised {describe_exception(exc)}") from None
    except BaseException as exc:
        raise PluginAbort(name, "check_config", exc) from exc
