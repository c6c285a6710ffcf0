"""Plugins that ship with the engine, by the names scenarios and `--plugin` use."""

from .adaptive_batch import AdaptiveBatchPlugin
from .adaptive_speculation import AdaptiveSpeculationPlugin
from .kv_int8 import KVInt8Plugin
from .kv_window_evict import KVWindowEvictPlugin
from .leaky import LeakyPlugin
from .priority import PriorityPlugin
from .sliding_window import SlidingWindowPlugin

BUILTIN = {
    PriorityPlugin.name: PriorityPlugin,
    AdaptiveBatchPlugin.name: AdaptiveBatchPlugin,
    KVInt8Plugin.name: KVInt8Plugin,
    AdaptiveSpeculationPlugin.name: AdaptiveSpeculationPlugin,
    SlidingWindowPlugin.name: SlidingWindowPlugin,
    KVWindowEvictPlugin.name: KVWindowEvictPlugin,
    LeakyPlugin.name: LeakyPlugin,
}
