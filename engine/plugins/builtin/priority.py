"""Priority / SLA-aware scheduling: higher priority (then earlier deadline) goes first.

Optionally keeps a slice of every step's budget for high-priority requests, so that a burst of
low-priority decodes or long prefills cannot push them out. Its completion hook keeps the score
of deadlines met and missed (a request meets its deadline when its last token is sampled by
deadline_step), per class, which the step header shows.
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
        # Deadlines met / missed by the requests that finished, per class ("high", "low").
        self.met = {"high": 0, "low": 0}
        self.missed = {"high": 0, "low": 0}

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

    def on_request_completion(self, request) -> None:
        if request.deadline_step is None:
            return
        group = "high" if request.priority >= self.high_priority else "low"
        score = self.met if request.finished_step <= request.deadline_step else self.missed
        score[group] += 1

    def describe(self) -> str:
        parts = [f"{self.met[g]} met, {self.missed[g]} missed ({g} priority)"
                 for g in ("high", "low") if self.met[g] + self.missed[g]]
        return "priority: deadlines " + "; ".join(parts) if parts else "priority: no deadline due yet"
