"""The cbtui engine: a steppable continuous-batching engine in pure PyTorch (no UI imports).

Names are imported on first use, so `engine.records` (plain data) loads without torch.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# OpenMP threads wait for each other between a forward pass's ~600 parallel regions. torch's default
# spins ~300,000 times first: on a busy CPU each region then waits for a thread the kernel has
# descheduled (whole runs 3-5x slower with three busy processes on 2 cores). Sleeping at once
# (PASSIVE) pays a wake-up per region instead: 1.5x slower on an idle machine. A short spin keeps
# the idle speed and is 1.5x PASSIVE's time on the busy machine (figures in the commit). Read when OpenMP
# starts (torch's import): only a process that imports the engine before torch gets it; a value set
# by the user (either variable) is kept. GNU OpenMP's (torch's wheels): Intel's ignores it.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "30000")

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
