"""Plugins: the hook API (base), the host that guards every call (host), and the built-ins."""

from .base import (
    AttentionPlugin,
    CachePlugin,
    Plugin,
    PluginAbort,
    ReadOnlyRequest,
    SchedulerPlugin,
    SchedulerState,
    load_plugin,
)

__all__ = ["AttentionPlugin", "CachePlugin", "Plugin", "PluginAbort", "ReadOnlyRequest", "SchedulerPlugin",
           "SchedulerState", "load_plugin"]
