"""The cbtui engine: a steppable continuous-batching engine in pure PyTorch (no UI imports)."""

from .config import EngineConfig
from .engine import Engine
from .records import StepRecord
from .request import Request, RequestState

__all__ = ["Engine", "EngineConfig", "StepRecord", "Request", "RequestState"]
