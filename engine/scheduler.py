"""The scheduler: which requests run in the next step, and how many tokens each.

A step spends a token budget in three passes, as in the textbook:
  1. decodes first: one token per decoding request, least recently served first, under the
     budget and the decode cap;
  2. prefill chunks for admitted requests still prefilling, oldest first;
  3. admission of waiting requests, preempted ones first; FCFS: when the KV blocks run out, nobody
     overtakes the head of the queue.
With speculative decoding, what the decodes leave of the budget goes to their drafts before any
prefill chunk (speculation/budget.py has the rule).
When a running request needs a KV block and none is free, the newest running request is preempted
by recompute (`_make_room`): its blocks are freed, it goes back to the front of the queue and keeps
its tokens. A request holding a contiguous run reserved for its whole length
(kv/contiguous_runs.py) never needs a block, and is passed over as a victim. Every request left
out of the step gets a reason. Policies (policies.py) say who may be admitted (FCFS, a static
batch) and who may use a reserved slice of the budget.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .config import EngineConfig
from .kv.prefix_cache import NO_HIT
from .plugins.base import SchedulerState
from .policies import Reservation, admission_policy
from .records import (
    REASON_BUDGET,
    REASON_DECODE_CAP,
    REASON_NO_BLOCKS,
    REASON_NO_RUN,
    REASON_PREEMPTED,
    REASON_RESERVED,
    Preemption,
    Shortfall,
)
from .request import Request, RequestState
from .speculation.budget import allot_drafts

PREEMPTED = RequestState.PREEMPTED


@dataclass(slots=True)
class Scheduled:
    request: Request
    kind: str  # "decode" or "prefill"
    num_tokens: int


@dataclass
class StepOutcome:
    """What postprocess did: where each sampled token went in its request's output, and the requests
    that sampled their first token and their last (finished) in this step."""

    positions: list[int] = field(default_factory=list)
    first_token: list[Request] = field(default_factory=list)
    finishing: list[Request] = field(default_factory=list)


@dataclass
class SchedulePlan:
    """One step's batch and why the other requests wait. A decode is one token plus its drafts, if
    speculating (`drafts`); `items` (built last) packs the decodes first, then the prefill chunks,
    which is the order the batch runs in."""

    budget: int
    decodes: list[Request] = field(default_factory=list)
    prefills: list[Scheduled] = field(default_factory=list)
    prefill_tokens: int = 0
    items: list[Scheduled] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # request id -> why not scheduled
    preempted: list[Request] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)  # why each of `preempted` was
    admission_blocked: Shortfall | None = None  # the head of the queue, short of KV blocks
    decode_demand: int = 0
    drafts: dict[Request, int] = field(default_factory=dict)  # speculating decode -> drafts it verifies
    draft_tokens: int = 0

    @property
    def used(self) -> int:
        return len(self.decodes) + self.draft_tokens + self.prefill_tokens

    @property
    def decode_used(self) -> int:
        return len(self.decodes) + self.draft_tokens

    @property
    def left(self) -> int:
        return self.budget - self.used

    def tokens(self, kind: str) -> int:
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


class Scheduler:
    def __init__(self, config: EngineConfig, kv_cache, stop_ids: frozenset[int] = frozenset(), speculator=None):
        self.config = config
        self.stop_ids = stop_ids  # a sampled token among these ends its request (end of sequence)
        self.speculator = speculator  # speculation/speculator.py, when decodes verify drafts
        self.kv = kv_cache
        self.waiting: deque[Request] = deque()  # arrived, holding no KV; preempted ones in front
        self.running: list[Request] = []  # admitted, in admission order (newest last)
        self.admission = admission_policy(config)
        self.reservation: Reservation | None = None  # this step's budget slice, when a plugin keeps one
        self.freed_blocks: dict[int, tuple[int, ...]] = {}  # this step's: request id -> blocks

    def add_arrived(self, request: Request) -> None:
        request.state = RequestState.WAITING
        self.waiting.append(request)

    def finish(self, request: Request) -> None:
        self.running.remove(request)
        self.freed_blocks[request.id] = self.kv.free(request.id)
        request.kv_capacity = 0

    def padding_slots(self) -> int:
        return self.admission.padding_slots()

    def state(self, step: int) -> SchedulerState:
        """The view scheduler plugins get (and may change) before this step is scheduled."""
        return SchedulerState(step=step, budget=self.config.max_tokens_per_step, waiting=self.waiting,
                              running=self.running)

    # -- one step ------------------------------------------------------------------------
    def schedule(self, state: SchedulerState | None = None) -> SchedulePlan:
        state = state or self.state(-1)
        plan = self._schedule(state, reserve=True)
        if not plan.items and self.reservation is not None:
            # A reserved slice its holders cannot use now (they wait for KV blocks that the starved
            # requests hold) would idle the engine for ever: this step runs without it. Preemptions
            # the first try made have happened: the second keeps them.
            plan = self._schedule(state, reserve=False, before=plan)
        return plan

    def _schedule(self, state: SchedulerState, reserve: bool, before: SchedulePlan | None = None) -> SchedulePlan:
        plan = SchedulePlan(budget=state.budget)
        if before is None:
            self.freed_blocks = {}
        else:
            plan.preempted, plan.preemptions = before.preempted, before.preemptions
        # Admission considers the queue as the step began: a request preempted in it waits a step.
        preempted_now = {r.id for r in plan.preempted}
        candidates = [r for r in self.admission.admissible(self.waiting, plan.reasons) if r.id not in preempted_now]
        plan.reasons.update((rid, REASON_PREEMPTED) for rid in preempted_now)
        self.reservation = self._reservation(state, candidates) if reserve else None
        decoding: list[Request] = []
        prefilling: list[Request] = []
        for r in self.running:
            (decoding if r.is_decoding else prefilling).append(r)

        # 1) Decodes, least recently served first (stable: admission order breaks ties), so that a
        # request the cap or the budget leaves out goes first next step instead of starving.
        decoding.sort(key=state.decode_key)
        plan.decode_demand = len(decoding)
        cap = self.config.max_decode_per_step
        slots = plan.budget if cap is None else min(cap, plan.budget)  # each decode is one token
        decodes, reservation = plan.decodes, self.reservation
        for r in decoding:
            if r.state is PREEMPTED:  # evicted earlier in this step, to make room for another
                continue
            if len(decodes) == slots:
                plan.reasons[r.id] = REASON_DECODE_CAP if slots == cap else REASON_BUDGET
            elif reservation and not reservation.room(r, 1):
                plan.reasons[r.id] = REASON_RESERVED
            elif self._make_room(plan, r, r.num_computed + 1):
                decodes.append(r)
                if reservation:
                    reservation.took(r, 1)
        if self.speculator is not None:
            allot_drafts(plan, self.speculator.wanted, self.kv, reservation, state.speculative_tokens)

        # 2) Prefill chunks for admitted requests, oldest first.
        chunk = self.config.prefill_chunk_size
        for r in prefilling:
            if r.state is PREEMPTED:
                continue
            n = min(chunk, r.remaining, self._room(plan, r))
            if n == 0:
                plan.reasons[r.id] = self._budget_reason(plan)
            elif self._make_room(plan, r, r.num_computed + n):
                self._add_prefill(plan, r, n)

        # 3) Admission, preempted requests first (they wait at the front of the queue).
        blocked: str | None = None  # why the head of the queue could not be admitted
        # A prefix cache hit is shared, not computed: it takes no budget and only the blocks it revives.
        for r in candidates:
            room = self._room(plan, r)
            hit = self.kv.match_prefix(r) if room and not blocked else NO_HIT
            n = min(chunk, r.remaining - hit.tokens, room)
            if blocked:  # behind the head, for the head's reason
                plan.reasons[r.id] = blocked
            elif n == 0:
                plan.reasons[r.id] = self._budget_reason(plan)
            elif not self.kv.can_admit(r, hit, hit.tokens + n):  # admission never preempts
                needed, free, longest_run = self.kv.admission_shortfall(r, hit.tokens + n, hit)
                # FCFS: nobody behind the head of the queue overtakes it
                blocked = plan.reasons[r.id] = REASON_NO_BLOCKS if longest_run is None else REASON_NO_RUN
                plan.admission_blocked = Shortfall(r.id, needed, free, longest_run)
            else:
                self.waiting.remove(r)
                self.running.append(r)
                r.state = RequestState.PREFILL
                self.kv.admit(r, hit)
                r.num_computed = r.cached_tokens = hit.tokens
                self._allocate(r, hit.tokens + n)
                self._add_prefill(plan, r, n)
        if plan.drafts:  # plain decodes first: the decode attention reads the batch's leading one-token items
            decodes.sort(key=plan.drafts.__contains__)
        drafts = plan.drafts
        plan.items = [Scheduled(r, "decode", 1 + drafts.get(r, 0)) for r in decodes] + plan.prefills
        return plan

    def _reservation(self, state: SchedulerState, candidates: list[Request]) -> Reservation | None:
        """The step's reserved slice, for holders that may run now; None in the common case, which
        keeps the per-decode loop free of calls (bench host)."""
        if not state.reserved_tokens:
            return None
        reservation = Reservation(state, {r.id for r in self.running} | {r.id for r in candidates})
        return reservation if reservation.holders else None

    def _room(self, plan: SchedulePlan, r: Request) -> int:
        """Tokens r may take now: what is left of the budget, less a slice reserved for others."""
        return plan.left if self.reservation is None else self.reservation.room(r, plan.left)

    def _add_prefill(self, plan: SchedulePlan, r: Request, n: int) -> None:
        plan.prefills.append(Scheduled(r, "prefill", n))
        plan.prefill_tokens += n
        if self.reservation:
            self.reservation.took(r, n)

    @staticmethod
    def _budget_reason(plan: SchedulePlan) -> str:
        return REASON_BUDGET if plan.left == 0 else REASON_RESERVED  # budget left, but not for this one

    def _allocate(self, r: Request, num_tokens: int) -> None:
        self.kv.allocate(r.id, num_tokens)
        r.kv_capacity = self.kv.capacity(r.id)

    def _make_room(self, plan: SchedulePlan, r: Request, need: int) -> bool:
        """Makes r's KV hold `need` tokens, preempting the newest running requests while the pool
        is short. Returns False when r itself was the newest, and preempted."""
        if need <= r.kv_capacity:  # the last block still has room: most decodes
            return True
        while not self.kv.can_allocate(r.id, need):
            # Preemption by recompute: drop the victim's KV, keep its tokens, requeue it in front.
            victim = self._victim(r)
            needed, free = self.kv.shortfall(r.id, need)
            plan.preemptions.append(Preemption(victim.id, r.id, needed, free, victim.num_computed))
            self.freed_blocks[victim.id] = self.kv.free(victim.id)
            victim.num_computed = victim.kv_capacity = 0
            victim.state = PREEMPTED
            victim.num_preemptions += 1
            self.waiting.appendleft(victim)
            plan.preempted.append(victim)
            plan.reasons[victim.id] = REASON_PREEMPTED
            given_back = plan.remove(victim)  # scheduled earlier in this step: its tokens go back
            if self.reservation:
                self.reservation.took(victim, -given_back)
            if victim is r:
                return False
        self._allocate(r, need)
        return True

    def _victim(self, r: Request) -> Request:
        """The newest running request that may be preempted (r itself, at worst), taken off running."""
        running = self.running
        if self.kv.preemptible(running[-1].id) or running[-1] is r:
            return running.pop()
        victim = next(v for v in reversed(running) if v is r or self.kv.preemptible(v.id))
        running.remove(victim)
        return victim

    # -- after the step ---------------------------------------------------------------------------
    def postprocess(self, step: int, plan: SchedulePlan, samples: list[bool], chosen: list[int],
                    now: float | None, kept: dict[Request, list[int]] | None = None) -> StepOutcome:
        """Moves the step's requests on: tokens computed, `chosen` appended to the outputs of those
        that sample (placeholders when overlapped: `now` is None and the times come with the
        tokens), finished requests' KV freed. `kept`: a speculating decode's accepted drafts, which
        go before its chosen token; its rejected drafts do not count as computed."""
        out = StepOutcome()
        stop = self.stop_ids
        tokens = iter(chosen)
        for s, flag in zip(plan.items, samples, strict=True):
            r = s.request
            r.num_computed += s.num_tokens
            r.last_scheduled_step = step
            if flag:
                if kept and r in kept:
                    good = kept[r]
                    r.num_computed -= s.num_tokens - 1 - len(good)
                    r.output.extend(good)
                out.positions.append(len(r.output))
                r.output.append(next(tokens))
                if r.first_token_step is None:
                    r.first_token_step, r.first_token_time = step, now
                    out.first_token.append(r)
                if len(r.output) >= r.max_new_tokens or (stop and r.output[-1] in stop):
                    r.state, r.finished_step, r.finish_time = RequestState.FINISHED, step, now
                    self.finish(r)
                    out.finishing.append(r)
                    continue
            if s.kind != "decode":  # a decode that did not finish stays a decode
                r.state = r.phase()
        return out
