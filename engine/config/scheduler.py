"""The scheduler section: how much work one step takes on, and in what order."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Section, setting

POLICIES = ("fcfs", "static")
MAX_BATCH_TOKENS = 1 << 20  # the most a scenario file or flag may ask for per step (budget, chunk, decode cap)
MAX_STATIC_BATCH = 10_000  # a static batch larger than any scenario's workload (scenarios/workload.MAX_REQUESTS)


@dataclass(frozen=True)
class SchedulerConfig(Section):
    max_tokens_per_step: int = setting(64, type=int, low=1, limit=MAX_BATCH_TOKENS, live=True,
                                       help="The token budget of one step: decodes first, then prefill chunks.")
    prefill_chunk_size: int = setting(16, type=int, low=1, limit=MAX_BATCH_TOKENS, live=True,
                                      help="The most prompt tokens of one request a step prefills.")
    max_decode_per_step: int | None = setting(None, type=int, low=1, optional=True, limit=MAX_BATCH_TOKENS, live=True,
                                              help="The most requests a step decodes (None: as the budget allows).")
    policy: str = setting("fcfs", type=str, choices=POLICIES, live=True,
                          help="fcfs: continuous batching, first come first served; static: fixed batches run "
                               "to the end.")
    static_batch_size: int = setting(8, type=int, low=1, limit=MAX_STATIC_BATCH, only_if=("policy", "static"),
                                     live=True, help="The requests of one batch under the static policy.")
