"""Plugins: the hook API (base), where a plugin comes from (loader), the host that guards every call
(host), and the built-ins."""

from .base import (
    AttentionPlugin,
    CachePlugin,
    Plugin,
    PluginAbort,
    ReadOnlyRequest,
    SchedulerPlugin,
    SchedulerState,
)
from .loader import load_plugin

__all__ = ["AttentionPlugin", "CachePlugin", "Plugin", "PluginAbort", "ReadOnlyRequest", "SchedulerPlugin",
           "SchedulerState", "load_plugin"]
