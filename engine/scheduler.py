"""The token-budget scheduler: decodes first (capped), then prefill chunks, FCFS.

When the paged KV pool runs dry, the newest running request is preempted by recompute: its
blocks are freed, it goes back to the head of the waiting queue and keeps its generated tokens.
The `static` policy reuses all of this but only lets one fixed batch run until it finishes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .config import EngineConfig
from .plugins.base import SchedulerState
from .records import (REASON_BUDGET, REASON_DECODE_CAP, REASON_NO_BLOCKS, REASON_PREEMPTED,
                      REASON_RESERVED, REASON_STATIC_BATCH)
from .request import Request, RequestState


@dataclass(slots=True)
class Scheduled:
    request: Request
    kind: str  # "decode" or "prefill"
    num_tokens: int


@dataclass
class SchedulePlan:
    items: list[Scheduled] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # request id -> why not scheduled
    preempted: list[Request] = field(default_factory=list)
    decode_demand: int = 0
    budget: int = 0
    used: int = 0  # tokens scheduled so far
    decode_used: int = 0
    reserved: int = 0  # budget slice only `reserved_for` requests may use
    reserved_for: set = field(default_factory=set)
    used_unreserved: int = 0

    def add(self, scheduled: Scheduled) -> None:
        self.items.append(scheduled)
        self.used += scheduled.num_tokens
        self.decode_used += scheduled.num_tokens if scheduled.kind == "decode" else 0
        if scheduled.request.id not in self.reserved_for:
            self.used_unreserved += scheduled.num_tokens

    def remove(self, request: Request) -> None:
        """Takes back a request's item (it was preempted after being scheduled)."""
        for i, s in enumerate(self.items):
            if s.request is request:
                del self.items[i]
                self.used -= s.num_tokens
                self.decode_used -= s.num_tokens if s.kind == "decode" else 0
                if request.id not in self.reserved_for:
                    self.used_unreserved -= s.num_tokens
                return

    @property
    def left(self) -> int:
        return self.budget - self.used

    def left_for(self, request: Request) -> int:
        """Budget this request may still take: requests outside a reservation leave it alone."""
        if not self.reserved or request.id in self.reserved_for:
            return self.left
        return max(0, min(self.left, self.budget - self.reserved - self.used_unreserved))

    def out_of_budget_reason(self, request: Request) -> str:
        return REASON_BUDGET if self.left == 0 else REASON_RESERVED

    def tokens(self, kind: str) -> int:
        return self.decode_used if kind == "decode" else self.used - self.decode_used


class Scheduler:
    def __init__(self, config: EngineConfig, kv_cache):
        self.config = config
        self.kv = kv_cache
        self.waiting: deque[Request] = deque()  # arrived, holding no KV; preempted ones in front
        self.running: list[Request] = []  # admitted, in admission order (newest last)
        self.static_batch: list[Request] = []
        self._static_members: set[Request] = set()  # the batch again, for O(1) membership (by identity)
        self.freed_blocks: dict[int, tuple[int, ...]] = {}  # this step's: request id -> blocks

    # -- queue changes -------------------------------------------------------------------
    def add_arrived(self, request: Request) -> None:
        request.state = RequestState.WAITING
        self.waiting.append(request)

    def finish(self, request: Request) -> None:
        self.running.remove(request)
        self.freed_blocks[request.id] = self.kv.free(request.id)
        request.kv_capacity = 0

    def _preempt(self, victim: Request, plan: SchedulePlan) -> None:
        """Recompute preemption: drop the KV, keep the tokens, requeue at the front."""
        self.running.remove(victim)
        self.freed_blocks[victim.id] = self.kv.free(victim.id)
        victim.num_computed = victim.kv_capacity = 0
        victim.state = RequestState.PREEMPTED
        victim.num_preemptions += 1
        self.waiting.appendleft(victim)
        plan.preempted.append(victim)
        plan.reasons[victim.id] = REASON_PREEMPTED
        plan.remove(victim)  # a victim scheduled earlier in this step gives its tokens back

    def _reserve(self, request: Request, num_tokens: int, plan: SchedulePlan) -> bool:
        """Makes KV room for request's next num_tokens, preempting newer requests if needed.

        Returns False when the request itself had to be preempted.
        """
        need = request.num_computed + num_tokens
        if need <= request.kv_capacity:  # fast path: the last block still has room
            return True
        while not self.kv.can_allocate(request.id, need):
            victim = self.running[-1]
            self._preempt(victim, plan)
            if victim is request:
                return False
        self.kv.allocate(request.id, need)
        request.kv_capacity = self.kv.capacity(request.id)
        return True

    # -- one step ------------------------------------------------------------------------
    def state(self, step: int) -> SchedulerState:
        """The view scheduler plugins get (and may change) before this step is scheduled."""
        return SchedulerState(step=step, budget=self.config.max_tokens_per_step, waiting=self.waiting,
                              running=self.running)

    def schedule(self, state: SchedulerState | None = None) -> SchedulePlan:
        cfg = self.config
        state = state or self.state(-1)
        self.freed_blocks = {}
        plan = SchedulePlan(budget=state.budget, reserved=state.reserved_tokens, reserved_for=state.reserved_for)
        candidates = self.waiting
        if cfg.policy == "static":
            candidates = self._static_candidates(plan)

        # 1) Decodes first: one token per decoding request, capped by budget and decode cap.
        # By default least recently served first (stable, so admission order breaks ties): when
        # the cap or the budget leaves decodes out, they go first next step instead of starving.
        decoders, prefilling = [], []
        for r in self.running:
            (decoders if r.is_decoding else prefilling).append(r)
        decoders.sort(key=state.decode_key)
        plan.decode_demand = len(decoders)
        cap = cfg.max_decode_per_step
        preempted = RequestState.PREEMPTED
        if cap is None and not plan.reserved and len(decoders) <= plan.left:
            self._schedule_all_decodes(decoders, plan)  # the common large step
        else:
            for r in decoders:
                if r.state is preempted:  # a victim earlier in this loop
                    continue
                if cap is not None and plan.decode_used >= cap:
                    plan.reasons[r.id] = REASON_DECODE_CAP
                    continue
                if plan.left_for(r) == 0:
                    plan.reasons[r.id] = plan.out_of_budget_reason(r)
                    continue
                if r.num_computed < r.kv_capacity or self._reserve(r, 1, plan):  # inline fast path
                    plan.add(Scheduled(r, "decode", 1))

        # 2) Prefill chunks for admitted requests still prefilling, oldest first.
        for r in prefilling:
            if r.state is RequestState.PREEMPTED:
                continue
            if plan.left_for(r) == 0:
                plan.reasons[r.id] = plan.out_of_budget_reason(r)
                continue
            n = min(cfg.prefill_chunk_size, r.remaining, plan.left_for(r))
            if self._reserve(r, n, plan):
                plan.add(Scheduled(r, "prefill", n))

        # 3) Admit waiting requests (preempted ones first) while budget and blocks last.
        blocked = False
        for r in list(candidates):
            if r in plan.preempted:  # not re-admitted in the step that evicted it
                continue
            if plan.left_for(r) == 0 or blocked:
                plan.reasons.setdefault(r.id, REASON_NO_BLOCKS if blocked else plan.out_of_budget_reason(r))
                continue
            n = min(cfg.prefill_chunk_size, r.remaining, plan.left_for(r))
            if not self.kv.can_allocate(r.id, n):
                plan.reasons[r.id] = REASON_NO_BLOCKS
                blocked = True  # FCFS: nobody overtakes the head of the queue
                continue
            self.waiting.remove(r)
            self.running.append(r)
            r.state = RequestState.PREFILL
            self.kv.allocate(r.id, n)
            r.kv_capacity = self.kv.capacity(r.id)
            plan.add(Scheduled(r, "prefill", n))
            plan.reasons.pop(r.id, None)
        if cfg.policy == "static":
            members = self._static_members
            for r in self.waiting:
                if r not in members:
                    plan.reasons[r.id] = REASON_STATIC_BATCH
        # Decodes always come first in the packed batch; prefills follow in schedule order.
        if plan.used > plan.decode_used:  # (an all-decode plan is in order already)
            plan.items.sort(key=lambda s: s.kind != "decode")
        return plan

    def _schedule_all_decodes(self, decoders: list[Request], plan: SchedulePlan) -> None:
        """Every decoder fits the budget and nothing caps or reserves: no per-request budget checks,
        and the plan's counters move once (per-item plan.add was a fifth of a 512-decode step)."""
        reserve, preempted = self._reserve, RequestState.PREEMPTED
        chosen = [r for r in decoders  # the KV room check inline: most decodes have it already
                  if r.state is not preempted and (r.num_computed < r.kv_capacity or reserve(r, 1, plan))]
        if plan.preempted:  # a victim chosen before it was evicted gives its slot back
            chosen = [r for r in chosen if r.state is not preempted]
        plan.items.extend([Scheduled(r, "decode", 1) for r in chosen])
        plan.used += len(chosen)
        plan.decode_used += len(chosen)
        plan.used_unreserved += len(chosen)

    def _static_candidates(self, plan: SchedulePlan) -> list[Request]:
        """Static batching: a new batch forms only when every member of the last one finished."""
        if all(r.is_finished for r in self.static_batch):
            self.static_batch = list(self.waiting)[: self.config.static_batch_size]
            self._static_members = set(self.static_batch)
        # Scanning the batch list per waiting request was 448 x 64 comparisons a step at 512 requests.
        members = self._static_members
        return [r for r in self.waiting if r in members]

    def padding_slots(self) -> int:
        """Static policy: slots of the batch held idle by finished (or missing) members."""
        if self.config.policy != "static" or not self.static_batch:
            return 0
        live = sum(not r.is_finished for r in self.static_batch)
        return self.config.static_batch_size - live if live else 0
