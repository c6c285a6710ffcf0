"""Scheduling policies: the small decisions the scheduler asks about, kept apart from its mechanism.

Admission (one per engine, from the scheduler section's `policy`): which waiting requests may be admitted.
  Fcfs         any of them, in queue order (the default).
  StaticBatch  only the members of one fixed batch, until every member has finished.
Budget (one per step, when a plugin reserved tokens in the SchedulerState):
  Reservation  a slice of the token budget that only some requests may use (the priority plugin's).
The decode order is a key in the SchedulerState (least recently served first unless a plugin sets it).
"""

from __future__ import annotations

from collections.abc import Collection

from ..config.scheduler import SchedulerConfig
from ..records import REASON_STATIC_BATCH
from ..requests.request import Request
from .state import SchedulerState


class Fcfs:
    """First come, first served: every waiting request may be admitted, in queue order."""

    def admissible(self, waiting, reasons: dict[int, str]) -> list[Request]:
        """The waiting requests that may be admitted this step, in the order to try them; the
        others get their reason in `reasons`."""
        return list(waiting)

    def padding_slots(self, finishing: Collection[Request] = ()) -> int:
        return 0


class StaticBatch(Fcfs):
    """Static batching: a batch of `size` requests runs until every member has finished; only then
    does the next batch form, from the head of the queue. Finished members leave their slots idle."""

    def __init__(self, size: int):
        self.size = size
        self.batch: list[Request] = []
        self.members: set[Request] = set()  # the batch again: membership by identity in O(1)

    def admissible(self, waiting, reasons: dict[int, str]) -> list[Request]:
        if all(r.is_finished for r in self.batch):
            self.batch = list(waiting)[: self.size]
            self.members = set(self.batch)
        chosen = []
        for r in waiting:
            if r in self.members:
                chosen.append(r)
            else:
                reasons[r.id] = REASON_STATIC_BATCH
        return chosen

    def padding_slots(self, finishing: Collection[Request] = ()) -> int:
        """Slots of the batch held idle in a step whose `finishing` requests finished in it: those of
        members finished before it (or missing); none once all were done before it. A member that
        finishes in the step ran in it, so its slot is idle from the next step on."""
        busy = sum(not r.is_finished or r in finishing for r in self.batch)
        return self.size - busy if busy else 0


def admission_policy(config: SchedulerConfig) -> Fcfs:
    return StaticBatch(config.static_batch_size) if config.policy == "static" else Fcfs()


class Reservation:
    """`tokens` of one step's budget kept for the requests in `holders` (the priority plugin's
    high-priority ones), so that a stream of others cannot crowd them out; the others share the rest."""

    def __init__(self, state: SchedulerState, runnable: set[int] | None = None):
        """`runnable`: ids of the requests that may run this step. A holder the admission policy keeps
        waiting (outside a static batch) holds no slice: nobody could use it, and the step would idle."""
        self.holders = state.reserved_for if runnable is None else state.reserved_for & runnable
        self.open_left = state.budget - state.reserved_tokens  # what the others may still take, together

    def room(self, request: Request, left: int) -> int:
        """Tokens `request` may take when `left` of the step's budget is left."""
        if request.id in self.holders:
            return left
        return max(0, min(left, self.open_left))

    def took(self, request: Request, num_tokens: int) -> None:
        """Counts tokens scheduled for `request` (negative: given back by a preempted request)."""
        if request.id not in self.holders:
            self.open_left -= num_tokens
