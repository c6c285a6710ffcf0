"""StepRecords and everything that reads them: types, schema, recordings, metrics, exports.

Plain data only: nothing in this package imports torch, so a replay or an export never needs the
engine (an import-linter contract keeps it so).
"""

from .prefix_view import PrefixView
from .types import (
    REASON_BUDGET,
    REASON_DECODE_CAP,
    REASON_NO_BLOCKS,
    REASON_NO_KV_MEMORY,
    REASON_NO_RUN,
    REASON_NOT_ARRIVED,
    REASON_PREEMPTED,
    REASON_RESERVED,
    REASON_STATIC_BATCH,
    CommView,
    IdKeyed,
    KVView,
    MemoryView,
    Preemption,
    RequestView,
    RunHeader,
    ScheduledItem,
    ShardView,
    Shortfall,
    StepRecord,
)

__all__ = ["REASON_BUDGET", "REASON_DECODE_CAP", "REASON_NO_BLOCKS", "REASON_NO_KV_MEMORY", "REASON_NO_RUN",
           "REASON_NOT_ARRIVED", "REASON_PREEMPTED", "REASON_RESERVED", "REASON_STATIC_BATCH", "CommView", "IdKeyed",
           "KVView",
           "MemoryView", "Preemption", "PrefixView", "RequestView", "RunHeader", "ScheduledItem", "ShardView",
           "Shortfall", "StepRecord"]
