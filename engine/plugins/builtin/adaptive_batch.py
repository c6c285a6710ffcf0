"""Adaptive batch sizing: steer max_tokens_per_step so a step takes about `target_ms`.

Each step the measured latency moves the budget multiplicatively toward the target (damped by
`gain`, at most 2x per step), within [min_budget, max_budget].
"""

from __future__ import annotations

from ..base import SchedulerPlugin, SchedulerState


class AdaptiveBatchPlugin(SchedulerPlugin):
    name = "adaptive_batch"

    def __init__(self, target_ms: float = 20.0, min_budget: int = 8, max_budget: int = 4096,
                 gain: float = 0.5, latency_fn=None):
        if not (isinstance(target_ms, (int, float)) and target_ms > 0):
            raise ValueError(f"target_ms={target_ms!r} must be a number > 0")
        if not (isinstance(min_budget, int) and isinstance(max_budget, int) and 1 <= min_budget <= max_budget):
            raise ValueError(f"min_budget={min_budget!r} and max_budget={max_budget!r} need 1 <= min <= max")
        if not (isinstance(gain, (int, float)) and 0 < gain <= 1):
            raise ValueError(f"gain={gain!r} must be in (0, 1]")
        self.target_s = target_ms / 1000.0
        self.min_budget, self.max_budget, self.gain = min_budget, max_budget, gain
        # Tests inject a latency model; by default the step's measured wall time.
        self.latency_fn = latency_fn or (lambda record: record.wall_time_s)
        self.budget: int | None = None
        self.history: list[int] = []

    def before_step(self, state: SchedulerState) -> None:
        if self.budget is None:
            self.budget = min(max(state.budget, self.min_budget), self.max_budget)
        if self.budget != state.budget:
            state.annotate(f"budget {state.budget} -> {self.budget} (adaptive)")
        state.budget = self.budget
        self.history.append(self.budget)

    def describe(self) -> str:
        return f"adaptive budget {self.budget} (target {self.target_s * 1000:g} ms/step)"

    def after_step(self, state: SchedulerState, record) -> None:
        used = record.decode_tokens + record.prefill_tokens
        if used == 0:
            return  # an idle step says nothing about latency
        latency = self.latency_fn(record)
        if latency <= self.target_s and record.unused_tokens > 0:
            return  # under target but demand-bound: a bigger budget would change nothing
        ratio = (self.target_s / max(latency, 1e-9)) ** self.gain
        ratio = min(2.0, max(0.5, ratio))
        self.budget = int(min(self.max_budget, max(self.min_budget, round(self.budget * ratio))))
