"""The cbtui engine: a steppable continuous-batching engine in pure PyTorch (no UI imports)."""

from .config import EngineConfig
from .engine import Engine
from .plugins import AttentionPlugin, CachePlugin, SchedulerPlugin, SchedulerState, load_plugin
from .records import StepRecord
from .request import Request, RequestState

__all__ = ["Engine", "EngineConfig", "StepRecord", "Request", "RequestState", "SchedulerPlugin",
           "AttentionPlugin", "CachePlugin", "SchedulerState", "load_plugin"]
