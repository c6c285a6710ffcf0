"""What the scheduler hands the runner for one step (SchedulePlan) and what its update did (StepEvents).

Plain Python: requests, ints and the records' ScheduledItem. The plan is the only thing the runner
is told: the batch (items, the tokens each feeds, which ones sample) and the KV changes since the
last plan (tables handed blocks or shrunk, requests that let go of theirs), so the runner's store,
and every shard's, lays out its pool exactly as the scheduler decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..records import Preemption, ScheduledItem, Shortfall
from ..requests.request import Request


@dataclass(slots=True)
class Scheduled:
    request: Request
    kind: str  # "decode" or "prefill"
    num_tokens: int


@dataclass
class SchedulePlan:
    """One step's batch and why the other requests wait. A decode is one token plus its drafts, if
    speculating (`drafts`); `items` (built last) packs the decodes first, then the prefill chunks,
    which is the order the batch runs in."""

    budget: int
    step: int = -1
    state: Any = None  # the SchedulerState plugins saw and changed before the step was planned
    decodes: list[Request] = field(default_factory=list)
    prefills: list[Scheduled] = field(default_factory=list)
    prefill_tokens: int = 0
    items: list[Scheduled] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # request id -> why not scheduled
    preempted: list[Request] = field(default_factory=list)
    aborted: list[Request] = field(default_factory=list)  # stopped before this step (Engine.abort)
    changes: list[str] = field(default_factory=list)  # settings changed from this step on, as told
    preemptions: list[Preemption] = field(default_factory=list)  # why each of `preempted` was
    admission_blocked: Shortfall | None = None  # the head of the queue, short of KV blocks
    decode_demand: int = 0
    drafts: dict[Request, int] = field(default_factory=dict)  # speculating decode -> drafts it verifies
    draft_tokens: int = 0
    # The batch, built from `items` once scheduling is done: each item's record entry, the tokens
    # it feeds (a speculating decode's drafts are added by the runner, which proposes them), and
    # whether it samples afterwards; `sampling` lists the requests that sample, in row order.
    batch: list[ScheduledItem] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    samples: list[bool] = field(default_factory=list)
    sampling: list[Request] = field(default_factory=list)
    # KV changes since the last plan: requests whose blocks (or dense tensors) were let go, tables
    # that are new or changed, and requests that finished (their samplers and drafts can go).
    released: list[int] = field(default_factory=list)
    tables: dict[int, tuple[int, ...]] = field(default_factory=dict)
    finished: list[int] = field(default_factory=list)

    @property
    def used(self) -> int:
        return len(self.decodes) + self.draft_tokens + self.prefill_tokens

    @property
    def left(self) -> int:
        return self.budget - self.used

    def tokens_of(self, kind: str) -> int:
        return len(self.decodes) + self.draft_tokens if kind == "decode" else self.prefill_tokens

    def remove(self, request: Request) -> int:
        """Takes back a request's decode or prefill chunk, if it has one; returns the tokens freed."""
        if request in self.decodes:
            self.decodes.remove(request)
            drafts = self.drafts.pop(request, 0)
            self.draft_tokens -= drafts
            return 1 + drafts
        for i, s in enumerate(self.prefills):
            if s.request is request:
                del self.prefills[i]
                self.prefill_tokens -= s.num_tokens
                return s.num_tokens
        return 0


@dataclass
class StepEvents:
    """What the scheduler's update did: where each sampled token went in its request's output, and
    the requests that sampled their first token and their last (finished) in this step."""

    positions: list[int] = field(default_factory=list)
    first_token: list[Request] = field(default_factory=list)
    finishing: list[Request] = field(default_factory=list)
