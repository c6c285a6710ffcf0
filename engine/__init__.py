"""The cbtui engine: a steppable continuous-batching engine in pure PyTorch (no UI imports).

Names are imported on first use, so `engine.records` (plain data) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Engine": "engine.engine", "EngineConfig": "engine.config", "StepRecord": "engine.records",
    "Request": "engine.requests.request", "RequestState": "engine.requests.request",
    "SchedulerPlugin": "engine.plugins",
    "AttentionPlugin": "engine.plugins", "CachePlugin": "engine.plugins", "SchedulerState": "engine.plugins",
    "load_plugin": "engine.plugins",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # the names for type checkers; `X as X` marks a re-export
    from .config import EngineConfig as EngineConfig
    from .engine import Engine as Engine
    from .plugins import AttentionPlugin as AttentionPlugin
    from .plugins import CachePlugin as CachePlugin
    from .plugins import SchedulerPlugin as SchedulerPlugin
    from .plugins import SchedulerState as SchedulerState
    from .plugins import load_plugin as load_plugin
    from .records import StepRecord as StepRecord
    from .requests.request import Request as Request
    from .requests.request import RequestState as RequestState


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
