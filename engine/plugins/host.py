"""Runs plugins' hooks for the engine, isolating each plugin from the others and from requests.

Every hook call is guarded. A plugin that raises an Exception, or hands back something unusable,
is disabled: the error goes into the next StepRecord and the step goes on without it. What the
host checks, and so what a plugin cannot break:
  - scheduler plugins see ReadOnlyRequest views, never the live requests: they cannot change a
    request's tokens or progress; the queues may only be reordered, the budget must stay an
    integer >= 1, a reservation must be well formed, `decode_key` must give comparable values
    (its order is taken once per step, so a key that fails later cannot fail the scheduler);
  - a reservation cannot stall the run: the scheduler lifts one that would leave a step empty;
  - an attention plugin's output must be a tensor of the query's shape, dtype and device; a cache
    plugin's keys and values must keep their shape, dtype and device;
  - `describe` must return a string; `check_config`, `attach` and construction that fail refuse
    to start the run (a one-line ValueError).
What a plugin is trusted with, by design: an attention plugin may replace attention and a cache
plugin gets the live KV cache (kv_int8 swaps its pools), so both may change outputs (kv_int8's
`token_divergence` counts by how much); `after_step` gets the step's StepRecord to annotate, and
other changes to it are not checked. A plugin that raises SystemExit or KeyboardInterrupt (any
BaseException that is not an Exception) ends the run with a PluginAbort naming it and the hook.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .base import (
    AttentionPlugin,
    CachePlugin,
    Plugin,
    PluginAbort,
    ReadOnlyRequest,
    SchedulerPlugin,
    SchedulerState,
    check_plugin_config,
    describe_exception,
    one_line,
    plugin_name,
)


class Guarded:
    """What PluginHost.guard says of the plugin code it ran."""

    failed = False


class PluginHost:
    def __init__(self, plugins: list[Plugin], config, num_layers: int):
        self.names: dict[int, str] = {}  # id() of a plugin -> its name, checked once
        for plugin in plugins:
            if not isinstance(plugin, (SchedulerPlugin, AttentionPlugin, CachePlugin)):
                raise ValueError(f"{plugin!r:.80} is not a SchedulerPlugin, AttentionPlugin or CachePlugin")
            self.names[id(plugin)] = plugin_name(plugin)
            check_plugin_config(plugin, config)
        self.plugins = list(plugins)
        self.disabled: set[int] = set()  # id() of disabled plugins
        self.errors: list[str] = []  # pending, for the next record
        self.num_layers = num_layers

    def active(self, kind: type) -> list:
        return [p for p in self.plugins if isinstance(p, kind) and id(p) not in self.disabled]

    def fail(self, plugin: Plugin, hook: str, exc: BaseException | str) -> None:
        self.disabled.add(id(plugin))
        what = one_line(exc) if isinstance(exc, str) else describe_exception(exc)
        self.errors.append(f"plugin {self.names[id(plugin)]} disabled: {hook} raised {what}")

    def abort(self, plugin: Plugin, hook: str, exc: BaseException) -> PluginAbort:
        """The error that ends the run: `raise host.abort(...) from exc` in a guard's BaseException branch."""
        self.disabled.add(id(plugin))  # should anything swallow the abort, the plugin stays off
        return PluginAbort(self.names[id(plugin)], hook, exc)

    def notes(self, state: SchedulerState | None) -> tuple[list[str], list[str], list[int] | None]:
        """What plugins add to a step's record, their one channel into it: notes for the header
        (the scheduler state's and each plugin's description), the errors since the last record
        (taken), and the sliding window an attention plugin narrows the mask to."""
        annotations = (state.annotations if state is not None else []) + self.descriptions()
        window = None
        for plugin in self.active(AttentionPlugin):
            with self.guard(plugin, "attention_window"):
                window = plugin.attention_window() or window
        errors, self.errors = self.errors, []
        return annotations, errors, window

    @contextmanager
    def guard(self, plugin: Plugin, hook: str) -> Iterator[Guarded]:
        """Runs plugin code: an Exception disables the plugin (its error goes into the next record)
        and is swallowed; SystemExit or KeyboardInterrupt end the run as a PluginAbort naming both."""
        outcome = Guarded()
        try:
            yield outcome
        except PluginAbort:
            raise
        except Exception as exc:
            outcome.failed = True
            self.fail(plugin, hook, exc)
        except BaseException as exc:
            raise self.abort(plugin, hook, exc) from exc

    def descriptions(self) -> list[str]:
        lines = []
        for plugin in self.plugins:
            if id(plugin) in self.disabled:
                continue
            with self.guard(plugin, "describe"):
                text = plugin.describe()
                if not isinstance(text, str):
                    raise TypeError(f"describe returned {type(text).__name__}, not a string")
                lines.append(one_line(text))
        return lines

    # -- scheduler hooks ----------------------------------------------------------------------
    def before_step(self, state: SchedulerState) -> None:
        plugins = self.active(SchedulerPlugin)
        if not plugins:
            return
        live_waiting, live_running = state.waiting, state.running
        requests: dict[int, object] = {}  # id() of a view -> its request
        state.waiting = self._views(live_waiting, requests)
        state.running = list(self._views(live_running, requests))
        default_key = key = state.decode_key
        key_owner: Plugin | None = None
        try:
            for plugin in plugins:
                saved = (list(state.waiting), list(state.running), state.budget, state.decode_key,
                         state.reserved_tokens, state.reserved_for, list(state.annotations),
                         dict(state.speculative_tokens))
                problem: str | BaseException | None
                try:
                    plugin.before_step(state)
                    problem = self._check_state(state, saved[0], saved[1])
                except PluginAbort:
                    raise
                except Exception as exc:  # any plugin failure is isolated
                    problem = exc
                except BaseException as exc:
                    raise self.abort(plugin, "before_step", exc) from exc
                if problem is not None:  # undo whatever it did
                    state.waiting, state.running = deque(saved[0]), list(saved[1])
                    (state.budget, state.decode_key, state.reserved_tokens, state.reserved_for,
                     state.annotations, state.speculative_tokens) = saved[2:]
                    self.fail(plugin, "before_step", problem)
                    continue
                if state.decode_key is not saved[3]:
                    key_owner = plugin
            if key_owner is not None:
                key = self._ranked(key_owner, state.decode_key, state.running, default_key)
        except BaseException:  # a PluginAbort: the run ends; the live queues were never touched
            state.waiting, state.running = live_waiting, live_running
            raise
        # The queues hold the same requests, in the order the plugins left them.
        order = [requests[id(v)] for v in state.waiting]
        live_waiting.clear()
        live_waiting.extend(order)
        live_running[:] = [requests[id(v)] for v in state.running]
        state.waiting, state.running, state.decode_key = live_waiting, live_running, key

    @staticmethod
    def _views(requests, by_view: dict) -> deque:
        views: deque = deque()
        for r in requests:
            view = ReadOnlyRequest(r)
            by_view[id(view)] = r
            views.append(view)
        return views

    def _ranked(self, owner: Plugin, key, running: list, default_key):
        """The plugin's decode_key, taken once: each running request's rank in the order it gives.
        The scheduler sorts by rank, so a key that raises or gives values that cannot be compared
        disables its plugin here, with the default order instead."""
        ordered = running
        with self.guard(owner, "decode_key") as outcome:
            ordered = sorted(running, key=key)
        if outcome.failed:
            return default_key
        rank = {view.id: i for i, view in enumerate(ordered)}
        return lambda r: rank[r.id]

    @staticmethod
    def _check_state(state: SchedulerState, waiting: list, running: list) -> str | None:
        if type(state.waiting) is not deque or type(state.running) is not list:
            return "queues replaced by something that is not a deque (waiting) and a list (running)"
        if Counter(map(id, state.waiting)) != Counter(map(id, waiting)) or \
                Counter(map(id, state.running)) != Counter(map(id, running)):
            return "a change to the request queues (reordering is allowed, adding or removing is not)"
        if isinstance(state.budget, bool) or not isinstance(state.budget, int) or state.budget < 1:
            return f"an invalid budget {state.budget!r:.40} (it must be an integer >= 1)"
        reserved = state.reserved_tokens
        if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0:
            return f"an invalid reservation of {reserved!r:.40} tokens (use state.reserve)"
        holders = state.reserved_for
        if not isinstance(holders, (set, frozenset)) or \
                not all(type(i) is int for i in holders):  # exactly int: no subclass with an odd __eq__
            return "an invalid reserved_for (a set of request ids; use state.reserve)"
        if not callable(state.decode_key):
            return f"a decode_key that is not a function ({type(state.decode_key).__name__})"
        if not isinstance(state.annotations, list) or not all(isinstance(a, str) for a in state.annotations):
            return "annotations that are not a list of strings (use state.annotate)"
        ks = state.speculative_tokens
        if type(ks) is not dict or not all(type(i) is int and type(k) is int and k >= 0 for i, k in ks.items()):
            return "an invalid speculative_tokens (request id -> k >= 0; use state.speculate)"
        return None

    def after_step(self, state: SchedulerState, record) -> None:
        plugins = self.active(SchedulerPlugin)
        if not plugins:
            return
        live_waiting, live_running = state.waiting, state.running
        by_view: dict = {}
        for plugin in plugins:
            state.waiting = self._views(live_waiting, by_view)
            state.running = list(self._views(live_running, by_view))
            try:
                with self.guard(plugin, "after_step"):
                    plugin.after_step(state, record)
            finally:
                state.waiting, state.running = live_waiting, live_running

    def on_request_completion(self, request) -> None:
        for plugin in self.active(SchedulerPlugin):
            with self.guard(plugin, "on_request_completion"):
                plugin.on_request_completion(ReadOnlyRequest(request))

    def release_blocks(self, blocks, items) -> None:
        for plugin in self.active(CachePlugin):
            with self.guard(plugin, "release_blocks"):
                plugin.release_blocks(blocks, items)

    # -- attention hooks ----------------------------------------------------------------------
    def attention_per_layer(self, base) -> list:
        layers = []
        for layer in range(self.num_layers):
            fn = base
            for plugin in self.active(AttentionPlugin):
                with self.guard(plugin, "wrap") as outcome:
                    wrapped = plugin.wrap(layer, fn)
                    if not callable(wrapped):
                        raise TypeError(f"wrap returned {type(wrapped).__name__}, not a function")
                if outcome.failed:
                    continue
                if wrapped is not fn:  # a layer the plugin leaves alone keeps the bare backend
                    fn = self._guarded_attention(plugin, wrapped, fallback=fn)
            layers.append(fn)
        return layers

    def _guarded_attention(self, plugin, fn, fallback):
        def attention(q, k, v, batch):
            if id(plugin) not in self.disabled:
                with self.guard(plugin, "attention"):
                    out = fn(q, k, v, batch)
                    problem = _tensor_problem(out, q)
                    if problem is None:
                        return out
                    self.fail(plugin, "attention", problem)
            return fallback(q, k, v, batch)
        return attention

    # -- cache hooks --------------------------------------------------------------------------
    def wrap_cache(self, cache):
        """Attaches cache plugins; returns the cache as the model should see it. A plugin whose
        attach fails is a configuration that cannot run: a one-line ValueError."""
        for plugin in self.active(CachePlugin):
            try:
                plugin.attach(cache)
            except Exception as exc:
                raise ValueError(f"plugin {self.names[id(plugin)]}: attach raised {describe_exception(exc)}") from None
            except BaseException as exc:
                raise self.abort(plugin, "attach", exc) from exc
        return HookedCache(cache, self) if any(isinstance(p, CachePlugin) for p in self.plugins) else cache


def _tensor_problem(out, like) -> str | None:
    """Why `out` cannot stand in for a tensor like `like` (shape, dtype, device), or None."""
    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}, not a tensor"
    if out.shape != like.shape or out.dtype != like.dtype or out.device != like.device:
        return (f"a tensor of shape {tuple(out.shape)} {out.dtype} on {out.device}, expected "
                f"{tuple(like.shape)} {like.dtype} on {like.device}")
    return None


class HookedCache:
    """The KV cache as the model sees it, with plugins' hooks around every append."""

    def __init__(self, cache, host: PluginHost):
        self.cache, self.host = cache, host

    def write(self, layer: int, k, v) -> None:
        batch = self.cache.step_batch
        host = self.host
        for plugin in host.active(CachePlugin):
            with host.guard(plugin, "before_append"):
                new_k, new_v = plugin.before_append(self.cache, layer, batch, k, v)
                problem = _tensor_problem(new_k, k) or _tensor_problem(new_v, v)
                if problem is not None:
                    raise ValueError(f"before_append returned {problem}")
                k, v = new_k, new_v
        self.cache.write(layer, k, v)
        for plugin in host.active(CachePlugin):
            with host.guard(plugin, "after_append"):
                plugin.after_append(self.cache, layer, batch)

    def read(self, layer: int):
        return self.cache.read(layer)
