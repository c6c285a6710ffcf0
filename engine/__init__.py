"""The cbtui engine: a steppable continuous-batching engine in pure PyTorch (no UI imports).

Names are imported on first use, so `engine.records` (plain data) loads without torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# OpenMP threads that wait for each other by spinning (torch's default) turn a busy CPU into a
# disaster: each of a forward pass's ~600 parallel regions waits for a thread the kernel has
# descheduled. `cbtui bench real`'s decode steps of 16 requests, 2 threads, load 5 on 2 cores:
# 0.8-2 s spinning, 0.09-0.23 s passive. Read when OpenMP starts (torch's import): only a process
# that imports the engine before torch gets it; a value set by the user is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
