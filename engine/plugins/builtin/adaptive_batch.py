"""Adaptive batch sizing: steer max_tokens_per_step from step latency and queue depth.

Two inputs, read from each step's record:
  - latency: a step slower than `target_ms` shrinks the budget (multiplicatively toward the
    target, damped by `gain`, at most halving it), whatever the queue;
  - load: under the target, a budget that was used up while requests waited for it (the queue
    depth: reason "token budget spent") grows toward the target (at most doubling), and a budget
    with no queue behind it (no request waiting to start, at least a quarter of it unused for
    `idle_steps` steps in a row) shrinks to what was used, so that a long prompt arriving into a
    quiet engine is cut into small chunks and does not stall the decodes.
The budget stays within [min_budget, max_budget]; each change is said in the step header with its
reason. On the CPU the tiny model never reaches a sensible latency target, so it is the queue that
moves the budget there (scenario `adaptive_batch`); on a GPU the latency cap shows too.

`ms_per_token` replaces the measured latency by a model of it, `base_ms + ms_per_token x tokens in
the step`: the same budgets on any machine and any load, which a lesson needs to say what the screen
will show (the measured time of a step on a shared CPU is noise).
"""

from __future__ import annotations

from ...records import REASON_BUDGET
from ..base import SchedulerPlugin, SchedulerState


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class AdaptiveBatchPlugin(SchedulerPlugin):
    name = "adaptive_batch"

    def __init__(self, target_ms: float = 20.0, min_budget: int = 8, max_budget: int = 4096,
                 gain: float = 0.5, idle_steps: int = 2, ms_per_token: float | None = None,
                 base_ms: float = 0.0, latency_fn=None):
        if isinstance(target_ms, bool) or not (isinstance(target_ms, (int, float)) and target_ms > 0):
            raise ValueError(f"target_ms={target_ms!r} must be a number > 0")
        if not (_is_int(min_budget) and _is_int(max_budget) and 1 <= min_budget <= max_budget):
            raise ValueError(f"min_budget={min_budget!r} and max_budget={max_budget!r} need 1 <= min <= max")
        if isinstance(gain, bool) or not (isinstance(gain, (int, float)) and 0 < gain <= 1):
            raise ValueError(f"gain={gain!r} must be in (0, 1]")
        if not (_is_int(idle_steps) and idle_steps >= 1):
            raise ValueError(f"idle_steps={idle_steps!r} must be an integer >= 1")
        for name, value in (("ms_per_token", ms_per_token), ("base_ms", base_ms)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name}={value!r} must be a number >= 0")
        if ms_per_token is None and base_ms:
            raise ValueError(f"base_ms={base_ms!r} is part of the latency model: give ms_per_token too")
        self.target_s = target_ms / 1000.0
        self.min_budget, self.max_budget, self.gain = min_budget, max_budget, gain
        self.idle_steps = idle_steps
        # By default the step's measured wall time; ms_per_token (or a test's latency_fn) models it.
        self.modelled = ""
        if latency_fn is None and ms_per_token is not None:
            self.modelled = f"{base_ms:g} ms + {ms_per_token:g} ms/token" if base_ms else f"{ms_per_token:g} ms/token"

            def latency_fn(record, base_s=base_ms / 1000.0, per_token_s=ms_per_token / 1000.0):
                return base_s + per_token_s * (record.decode_tokens + record.prefill_tokens)
        self.latency_fn = latency_fn or (lambda record: record.wall_time_s)
        self.budget: int | None = None
        self.why = ""  # the reason for the last change, for the step header
        self.history: list[int] = []
        self._idle = 0  # steps in a row with budget to spare and no queue
        self._applied: int | None = None  # the budget the last step ran with

    def before_step(self, state: SchedulerState) -> None:
        if self.budget is None:
            self.budget = min(max(state.budget, self.min_budget), self.max_budget)
        if self.budget != (self._applied if self._applied is not None else state.budget):
            state.annotate(f"budget {self._applied or state.budget} -> {self.budget} (adaptive: {self.why})")
        state.budget = self._applied = self.budget
        self.history.append(self.budget)

    def describe(self) -> str:
        """Read after the step: the budget it ran with, the next step's when that differs (the step's
        own budget is what the budget panel shows beside this), and where the latency comes from."""
        budget = f"adaptive budget {self._applied if self._applied is not None else self.budget}"
        if self._applied is not None and self.budget != self._applied:
            budget += f", next {self.budget}"
        latency = f", latency modelled: {self.modelled}" if self.modelled else ""
        return f"{budget} (target {self.target_s * 1000:g} ms/step{latency})"

    def after_step(self, state: SchedulerState, record) -> None:
        used = record.decode_tokens + record.prefill_tokens
        if used == 0 or self.budget is None:
            return  # an idle step says nothing about latency or load
        latency = self.latency_fn(record)
        if latency > self.target_s:
            self._idle = 0
            ratio = max(0.5, (self.target_s / latency) ** self.gain)
            self._set(round(self.budget * ratio), f"{latency * 1000:.1f} ms > {self.target_s * 1000:g} ms target")
        elif record.unused_tokens == 0 and (queue := sum(v.reason == REASON_BUDGET for v in record.requests)):
            self._idle = 0
            ratio = min(2.0, (self.target_s / max(latency, 1e-9)) ** self.gain)
            self._set(round(self.budget * ratio), f"budget used up, {queue} waiting for it")
        elif record.waiting == 0 and record.unused_tokens * 4 >= self.budget:
            self._idle += 1
            if self._idle >= self.idle_steps:
                self._set(used, f"no queue, {record.unused_tokens} of {self.budget} unused")
        else:
            self._idle = 0

    def _set(self, budget: int, why: str) -> None:
        budget = int(min(self.max_budget, max(self.min_budget, budget)))
        if budget != self.budget:
            self.budget, self.why = budget, why
