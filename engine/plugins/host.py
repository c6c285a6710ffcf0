"""Runs plugins' hooks for the engine, isolating each plugin from the others and from requests.

Every hook call is guarded: a plugin that raises (or hands back something unusable) is disabled,
the error goes into the next StepRecord, and the step goes on without it.
"""

from __future__ import annotations

from collections import Counter

from .base import AttentionPlugin, CachePlugin, Plugin, SchedulerPlugin, SchedulerState


class PluginHost:
    def __init__(self, plugins: list[Plugin], config, num_layers: int):
        for plugin in plugins:
            if not isinstance(plugin, (SchedulerPlugin, AttentionPlugin, CachePlugin)):
                raise ValueError(f"{plugin!r} is not a SchedulerPlugin, AttentionPlugin or CachePlugin")
            plugin.check_config(config)
        self.plugins = list(plugins)
        self.disabled: set[int] = set()  # id() of disabled plugins
        self.errors: list[str] = []  # pending, for the next record
        self.num_layers = num_layers

    def active(self, kind: type) -> list:
        return [p for p in self.plugins if isinstance(p, kind) and id(p) not in self.disabled]

    def fail(self, plugin: Plugin, hook: str, exc: BaseException | str) -> None:
        self.disabled.add(id(plugin))
        what = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.errors.append(f"plugin {plugin.name} disabled: {hook} raised {what}")

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors

    def descriptions(self) -> list[str]:
        return [p.describe() for p in self.plugins if id(p) not in self.disabled]

    # -- scheduler hooks ----------------------------------------------------------------------
    def before_step(self, state: SchedulerState) -> None:
        for plugin in self.active(SchedulerPlugin):
            waiting, running = list(state.waiting), list(state.running)
            budget, decode_key = state.budget, state.decode_key
            problem: str | Exception | None
            try:
                plugin.before_step(state)
                problem = self._check_state(state, waiting, running)
            except Exception as exc:  # any plugin failure is isolated
                problem = exc
            if problem is not None:
                # Undo whatever it did: the queues must hold exactly the requests they held.
                state.waiting.clear()
                state.waiting.extend(waiting)
                state.running[:] = running
                state.budget, state.decode_key = budget, decode_key
                state.reserved_tokens, state.reserved_for = 0, set()
                self.fail(plugin, "before_step", problem)

    @staticmethod
    def _check_state(state: SchedulerState, waiting: list, running: list) -> str | None:
        if Counter(map(id, state.waiting)) != Counter(map(id, waiting)) or \
                Counter(map(id, state.running)) != Counter(map(id, running)):
            return "a change to the request queues (reordering is allowed, adding or removing is not)"
        if isinstance(state.budget, bool) or not isinstance(state.budget, int) or state.budget < 1:
            return f"an invalid budget {state.budget!r} (it must be an integer >= 1)"
        return None

    def after_step(self, state: SchedulerState, record) -> None:
        for plugin in self.active(SchedulerPlugin):
            try:
                plugin.after_step(state, record)
            except Exception as exc:
                self.fail(plugin, "after_step", exc)

    def on_request_completion(self, request) -> None:
        for plugin in self.active(SchedulerPlugin):
            try:
                plugin.on_request_completion(request)
            except Exception as exc:
                self.fail(plugin, "on_request_completion", exc)

    # -- attention hooks ----------------------------------------------------------------------
    def attention_per_layer(self, base) -> list:
        layers = []
        for layer in range(self.num_layers):
            fn = base
            for plugin in self.active(AttentionPlugin):
                try:
                    wrapped = plugin.wrap(layer, fn)
                    if not callable(wrapped):
                        raise TypeError(f"wrap returned {type(wrapped).__name__}, not a function")
                except Exception as exc:
                    self.fail(plugin, "wrap", exc)
                    continue
                if wrapped is not fn:  # a layer the plugin leaves alone keeps the bare backend
                    fn = self._guarded_attention(plugin, wrapped, fallback=fn)
            layers.append(fn)
        return layers

    def _guarded_attention(self, plugin, fn, fallback):
        def attention(q, k, v, batch):
            if id(plugin) not in self.disabled:
                try:
                    out = fn(q, k, v, batch)
                    if getattr(out, "shape", None) == q.shape:
                        return out
                    self.fail(plugin, "attention", f"an output of shape {getattr(out, 'shape', None)}, "
                                                   f"expected {tuple(q.shape)}")
                except Exception as exc:
                    self.fail(plugin, "attention", exc)
            return fallback(q, k, v, batch)
        return attention

    # -- cache hooks --------------------------------------------------------------------------
    def wrap_cache(self, cache):
        """Attaches cache plugins; returns the cache as the model should see it."""
        for plugin in self.active(CachePlugin):
            plugin.attach(cache)  # a failure here is a bad configuration: it raises to the caller
        return HookedCache(cache, self) if any(isinstance(p, CachePlugin) for p in self.plugins) else cache


class HookedCache:
    """The KV cache as the model sees it, with plugins' hooks around every append."""

    def __init__(self, cache, host: PluginHost):
        self.cache, self.host = cache, host

    def write(self, layer: int, k, v) -> None:
        batch = self.cache.step_batch
        for plugin in self.host.active(CachePlugin):
            try:
                new_k, new_v = plugin.before_append(self.cache, layer, batch, k, v)
                if new_k.shape != k.shape or new_v.shape != v.shape:
                    raise ValueError("before_append changed the shape of k or v")
                k, v = new_k, new_v
            except Exception as exc:
                self.host.fail(plugin, "before_append", exc)
        self.cache.write(layer, k, v)
        for plugin in self.host.active(CachePlugin):
            try:
                plugin.after_append(self.cache, layer, batch)
            except Exception as exc:
                self.host.fail(plugin, "after_append", exc)

    def read(self, layer: int):
        return self.cache.read(layer)
