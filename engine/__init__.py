"""The cbtui engine: a steppable continuous-batching engine in pure PyTorch (no UI imports).

Names are imported on first use, so `engine.records` (plain data) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "engine.engine", "EngineConfig": "engine.config", "StepRecord": "engine.records",
    "Request": "engine.request", "RequestState": "engine.request", "SchedulerPlugin": "engine.plugins",
    "AttentionPlugin": "engine.plugins", "CachePlugin": "engine.plugins", "SchedulerState": "engine.plugins",
    "load_plugin": "engine.plugins",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .config import EngineConfig
    from .engine import Engine
    from .plugins import AttentionPlugin, CachePlugin, SchedulerPlugin, SchedulerState, load_plugin
    from .records import StepRecord
    from .request import Request, RequestState


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
