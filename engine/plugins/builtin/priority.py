"""Priority / SLA-aware scheduling: higher priority (then earlier deadline) goes first.

Optionally keeps a slice of every step's budget for high-priority requests, so that a burst of
low-priority decodes or long prefills cannot push them out.
"""

from __future__ import annotations

from ..base import SchedulerPlugin, SchedulerState

NO_DEADLINE = float("inf")


def _urgency(r) -> tuple:
    return (-r.priority, r.deadline_step if r.deadline_step is not None else NO_DEADLINE)


class PriorityPlugin(SchedulerPlugin):
    name = "priority"

    def __init__(self, reserve_tokens: int = 0, high_priority: int = 1):
        if isinstance(reserve_tokens, bool) or not isinstance(reserve_tokens, int) or reserve_tokens < 0:
            raise ValueError(f"reserve_tokens={reserve_tokens!r} must be an integer >= 0")
        self.reserve_tokens = reserve_tokens
        self.high_priority = high_priority

    def before_step(self, state: SchedulerState) -> None:
        # Stable sorts: equal urgency keeps FCFS order; the least urgent end up last in
        # `running`, which is where preemption takes its victims from.
        ordered_waiting = sorted(state.waiting, key=lambda r: (*_urgency(r), r.arrival_step))
        state.waiting.clear()
        state.waiting.extend(ordered_waiting)
        state.running.sort(key=_urgency)
        state.decode_key = lambda r: (*_urgency(r), r.last_scheduled_step)
        high = [r.id for r in (*state.running, *state.waiting) if r.priority >= self.high_priority]
        if self.reserve_tokens and high:
            state.reserve(self.reserve_tokens, high)
            state.annotate(f"{state.reserved_tokens} tokens reserved for {len(high)} high-priority")
