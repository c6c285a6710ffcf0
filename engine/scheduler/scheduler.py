"""The scheduler: which requests run in the next step, and how many tokens each.

A step spends a token budget in three passes, as in the textbook:
  1. decodes first: one token per decoding request, least recently served first, under the
     budget and the decode cap;
  2. prefill chunks for admitted requests still prefilling, oldest first;
  3. admission of waiting requests, preempted ones first; FCFS: when the KV blocks run out, nobody
     overtakes the head of the queue.
With speculative decoding, what the decodes leave of the budget goes to their drafts before any
prefill chunk (`_allot_drafts` has the rule).
When a running request needs a KV block and none is free, the newest running request is preempted
by recompute (`_make_room`): its blocks are freed, it goes back to the front of the queue and keeps
its tokens. A request holding a contiguous run reserved for its whole length
(kv/contiguous_runs.py) never needs a block, and is passed over as a victim. Every request left
out of the step gets a reason. Policies (policies.py) say who may be admitted (FCFS, a static
batch) and who may use a reserved slice of the budget.

The scheduler owns the block manager (kv/block_manager.py; None for the dense layout, which has no
blocks: its one limit is a cap on the tokens all requests hold, `dense_tokens`, each request's
whole length reserved at admission): every KV decision is made here, and the plan carries the changes
to the runner's store. After the runner has run the plan, `update` moves the requests on: tokens
computed and appended, finished requests freed, rejected drafts' blocks rolled back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..config.scheduler import SchedulerConfig
from ..kv.block_manager import BlockManager
from ..kv.prefix_cache import NO_HIT
from ..records import (
    REASON_BUDGET,
    REASON_DECODE_CAP,
    REASON_NO_BLOCKS,
    REASON_NO_KV_MEMORY,
    REASON_NO_RUN,
    REASON_PREEMPTED,
    REASON_RESERVED,
    Preemption,
    ScheduledItem,
    Shortfall,
)
from ..requests.request import Request, RequestState
from .plan import Scheduled, SchedulePlan, StepEvents
from .policies import Reservation, admission_policy
from .state import SchedulerState

PREEMPTED = RequestState.PREEMPTED


class SchedulerHooks(Protocol):
    """What the scheduler calls of the engine's plugins (plugins/host.py's PluginHost)."""

    def before_step(self, state: SchedulerState) -> None: ...
    def release_blocks(self, blocks: BlockManager, items: list[ScheduledItem]) -> None: ...
    def on_request_completion(self, request: Request) -> None: ...


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager | None, plugins: SchedulerHooks | None = None,
                 stop_ids: frozenset[int] = frozenset(), drafts_wanted: Callable[[Request, int], int] | None = None,
                 dense_tokens: int | None = None):
        self.config = config
        self.blocks = blocks  # None: the dense layout, which grows on demand and is never short
        self.plugins = plugins  # the engine's PluginHost (scheduler hooks, cache plugins' evictions), if any
        self.stop_ids = stop_ids  # a sampled token among these ends its request (end of sequence)
        self.drafts_wanted = drafts_wanted  # speculation: drafts a decode could verify (speculator.wanted)
        self.waiting: deque[Request] = deque()  # arrived, holding no KV; preempted ones in front
        self.running: list[Request] = []  # admitted, in admission order (newest last)
        self.admission = admission_policy(config)
        self.reservation: Reservation | None = None  # this step's budget slice, when a plugin keeps one
        self.kv_tokens: dict[int, int] = {}  # request id -> tokens whose keys and values are stored
        self.freed_blocks: dict[int, tuple[int, ...]] = {}  # this step's: request id -> blocks
        self._released: list[int] = []  # requests that let go of their KV since the last plan
        self._finished: list[int] = []  # requests that finished since the last plan
        self._aborting: list[Request] = []  # to stop before the next step (Engine.abort)
        self.dense_tokens = dense_tokens  # the dense layout's cap (cache.dense_max_tokens); None: no cap
        self.dense_reserved: dict[int, int] = {}  # dense: admitted request id -> the tokens it may come to hold
        self.dense_held = 0  # their sum

    def add_arrived(self, request: Request) -> None:
        request.state = RequestState.WAITING
        self.waiting.append(request)

    def abort(self, request: Request) -> None:
        """Stops the request before the next step: it leaves its queue and its KV is freed then."""
        if request not in self._aborting:
            self._aborting.append(request)

    def reconfigure(self, config: SchedulerConfig) -> None:
        """New settings from the next step on (live_changes.py says which may change)."""
        if (config.policy, config.static_batch_size) != (self.config.policy, self.config.static_batch_size):
            self.admission = admission_policy(config)
        self.config = config

    def state(self, step: int) -> SchedulerState:
        """The view scheduler plugins get (and may change) before this step is scheduled."""
        return SchedulerState(step=step, budget=self.config.max_tokens_per_step, waiting=self.waiting,
                              running=self.running)

    # -- one step ------------------------------------------------------------------------
    def schedule(self, step: int = -1, state: SchedulerState | None = None) -> SchedulePlan:
        """Plans the step: scheduler plugins see the queues first (`state`), then the budget is spent.
        The plan carries the batch and the KV changes since the last plan."""
        if state is None:
            state = self.state(step)
            if self.plugins is not None:
                self.plugins.before_step(state)
        if self.blocks is not None:
            self.blocks.begin_step()
        self.freed_blocks = {}
        aborted = self._abort(step)
        plan = self._schedule(state, reserve=True)
        if not plan.items and self.reservation is not None:
            # A reserved slice its holders cannot use now (they wait for KV blocks that the starved
            # requests hold) would idle the engine for ever: this step runs without it. Preemptions
            # the first try made have happened: the second keeps them.
            plan = self._schedule(state, reserve=False, before=plan)
        plan.step, plan.state, plan.aborted = step, state, aborted
        self._build_batch(plan)
        plan.released, self._released = self._released, []
        plan.finished, self._finished = self._finished, []
        if self.blocks is not None:
            plan.tables = self.blocks.take_changes()
        return plan

    def _abort(self, step: int) -> list[Request]:
        """The requests stopped before this step: out of their queue, their KV freed."""
        aborted, self._aborting = self._aborting, []
        for r in aborted:
            if r in self.running:
                self.running.remove(r)
                self._release(r)
            elif r in self.waiting:
                self.waiting.remove(r)
            r.state, r.finished_step = RequestState.ABORTED, step
            self._finished.append(r.id)
        return aborted

    def _schedule(self, state: SchedulerState, reserve: bool, before: SchedulePlan | None = None) -> SchedulePlan:
        plan = SchedulePlan(budget=state.budget)
        if before is not None:
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
        if self.drafts_wanted is not None:
            self._allot_drafts(plan, state.speculative_tokens)

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
        blocks = self.blocks
        # A prefix cache hit is shared, not computed: it takes no budget and only the blocks it revives.
        for r in candidates:
            room = self._room(plan, r)
            hit = blocks.match_prefix(r) if room and not blocked and blocks is not None else NO_HIT
            n = min(chunk, r.remaining - hit.tokens, room)
            if blocked:  # behind the head, for the head's reason
                plan.reasons[r.id] = blocked
            elif n == 0:
                plan.reasons[r.id] = self._budget_reason(plan)
            elif blocks is None and not self._dense_fits(r):  # dense: FCFS behind the head, as for blocks
                blocked = plan.reasons[r.id] = REASON_NO_KV_MEMORY
            elif blocks is not None and not blocks.can_admit(r, hit, hit.tokens + n):  # admission never preempts
                needed, free, longest_run = blocks.admission_shortfall(r, hit.tokens + n, hit)
                # FCFS: nobody behind the head of the queue overtakes it
                blocked = plan.reasons[r.id] = REASON_NO_BLOCKS if longest_run is None else REASON_NO_RUN
                plan.admission_blocked = Shortfall(r.id, needed, free, longest_run)
            else:
                self.waiting.remove(r)
                self.running.append(r)
                r.state = RequestState.PREFILL
                if blocks is not None:
                    blocks.admit(r, hit)
                else:
                    self._dense_admit(r)
                if hit.blocks:
                    self.kv_tokens[r.id] = hit.tokens
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
        if self.blocks is None:  # dense: grows on demand, never short
            r.kv_capacity = 1 << 62
            return
        self.blocks.allocate(r.id, num_tokens)
        r.kv_capacity = self.blocks.capacity(r.id)

    def _make_room(self, plan: SchedulePlan, r: Request, need: int) -> bool:
        """Makes r's KV hold `need` tokens, preempting the newest running requests while the pool
        is short. Returns False when r itself was the newest, and preempted."""
        if need <= r.kv_capacity:  # the last block still has room: most decodes (and every dense step)
            return True
        blocks = self.blocks
        assert blocks is not None
        while not blocks.can_allocate(r.id, need):
            # Preemption by recompute: drop the victim's KV, keep its tokens, requeue it in front.
            victim = self._victim(r)
            needed, free = blocks.shortfall(r.id, need)
            plan.preemptions.append(Preemption(victim.id, r.id, needed, free, victim.num_computed))
            self._release(victim)
            victim.num_computed = 0
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
        running, blocks = self.running, self.blocks
        assert blocks is not None
        if blocks.preemptible(running[-1].id) or running[-1] is r:
            return running.pop()
        victim = next(v for v in reversed(running) if v is r or blocks.preemptible(v.id))
        running.remove(victim)
        return victim

    def _allot_drafts(self, plan: SchedulePlan, ks: dict[int, int]) -> None:
        """Speculation's share of the budget. A speculating decode costs 1 + k tokens. Every decode's
        own token comes first (the decode cap counts requests, not tokens); what the decodes leave
        is then spread over their drafts one level at a time (every decode's first draft, then every
        decode's second, ...), before any prefill chunk. So when the budget is tight k shrinks,
        evenly, and no decode is left out for another's drafts; a decode's first drafts, the likeliest
        to be accepted, are the last to go. Drafts never preempt: a draft that needs a KV block takes
        a free one or is not proposed. `ks` caps some requests' drafts (a plugin's adaptive k)."""
        left, reservation, blocks = plan.left, self.reservation, self.blocks
        if left <= 0 or not plan.decodes:
            return
        assert self.drafts_wanted is not None
        want = [self.drafts_wanted(r, min(left, ks.get(r.id, left))) for r in plan.decodes]
        given = [0] * len(want)
        level = 1
        while left > 0 and any(w >= level for w in want):
            for i, r in enumerate(plan.decodes):
                if left == 0:
                    break
                if want[i] < level:
                    continue
                need = r.num_computed + 2 + given[i]  # its own token, the drafts it has, one more
                if reservation and not reservation.room(r, 1):
                    want[i] = given[i]
                    continue
                if need > r.kv_capacity:
                    assert blocks is not None  # dense capacity has no end
                    if not blocks.can_allocate(r.id, need):
                        want[i] = given[i]  # no free block for it: its drafts stop here
                        continue
                    self._allocate(r, need)
                given[i] += 1
                left -= 1
                if reservation:
                    reservation.took(r, 1)
            level += 1
        for r, n in zip(plan.decodes, given, strict=True):
            if n:
                plan.drafts[r] = n
                plan.draft_tokens += n

    def _build_batch(self, plan: SchedulePlan) -> None:
        """Each item's record entry, the tokens it feeds, and whether it samples afterwards."""
        batch, tokens, samples, sampling = plan.batch, plan.tokens, plan.samples, plan.sampling
        for s in plan.items:
            r, n, first = s.request, s.num_tokens, s.request.num_computed
            if s.kind == "decode":  # feeds its last generated token (then its drafts), and samples
                batch.append(ScheduledItem(r.id, "decode", first, n, first + n, drafts=n - 1))
                tokens.append(r.output[-1:])
                samples.append(True)
                sampling.append(r)
                continue
            batch.append(ScheduledItem(r.id, s.kind, first, n, first + n))
            tokens.append(r.token_slice(first, n))
            flag = first + n == len(r.prompt) + len(r.output)
            samples.append(flag)
            if flag:
                sampling.append(r)

    # -- the dense layout's cap -------------------------------------------------------------------
    # A dense request's tensors grow as it runs and nothing preempts it, so its whole length (prompt
    # plus max_new_tokens) is reserved when it is admitted: the running ones never run short, and
    # what they hold stays under the cap (drafts aside: a speculating decode may hold k more a step).
    @staticmethod
    def _dense_length(r: Request) -> int:
        return len(r.prompt) + r.max_new_tokens

    def _dense_fits(self, r: Request) -> bool:
        cap = self.dense_tokens
        return cap is None or self.dense_held + self._dense_length(r) <= cap

    def _dense_admit(self, r: Request) -> None:
        if self.dense_tokens is not None:
            self.dense_reserved[r.id] = n = self._dense_length(r)
            self.dense_held += n

    def _dense_release(self, r: Request) -> None:
        self.dense_held -= self.dense_reserved.pop(r.id, 0)

    # -- after the step ---------------------------------------------------------------------------
    def update(self, plan: SchedulePlan, sampled: list[int], kept: dict[Request, list[int]],
               now: float | None) -> StepEvents:
        """Moves the step's requests on once the runner has run the plan: the keys stored, `sampled`
        appended to the outputs of those that sample (placeholders when overlapped: `now` is None
        and the times come with the tokens), finished requests' KV freed, rejected drafts' blocks
        rolled back. `kept`: a speculating decode's accepted drafts, which go before its token."""
        blocks, held = self.blocks, self.kv_tokens
        for item in plan.batch:
            held[item.request_id] = item.key_len
        plugins = self.plugins
        if blocks is not None:
            if plugins is not None:
                plugins.release_blocks(blocks, plan.batch)  # cache plugins may give dead blocks back early
            blocks.stored(held)
        events = self._advance(plan, sampled, kept, now)
        if plugins is not None:
            for r in events.finishing:
                plugins.on_request_completion(r)
        if kept:
            self._settle(plan, kept)
        return events

    def _advance(self, plan: SchedulePlan, sampled: list[int], kept: dict[Request, list[int]],
                 now: float | None) -> StepEvents:
        out = StepEvents()
        stop, step = self.stop_ids, plan.step
        tokens = iter(sampled)
        for s, flag in zip(plan.items, plan.samples, strict=True):
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
                if (len(r.output) >= r.max_new_tokens or (stop and r.output[-1] in stop)
                        or (r.stop is not None and r.stop.hit(r.output))):
                    r.state, r.finished_step, r.finish_time = RequestState.FINISHED, step, now
                    self.running.remove(r)
                    self._release(r)
                    self._finished.append(r.id)
                    out.finishing.append(r)
                    continue
            if s.kind != "decode":  # a decode that did not finish stays a decode
                r.state = r.phase()
        return out

    def _settle(self, plan: SchedulePlan, kept: dict[Request, list[int]]) -> None:
        """After a speculative step: the record's accepted counts, the requests' totals, and the
        rejected drafts' blocks given back (emptied blocks show as freed in the record)."""
        blocks = self.blocks
        for item, s in zip(plan.batch, plan.items, strict=True):
            r = s.request
            if not item.drafts:
                continue
            good = kept[r]
            item.accepted = len(good)
            r.drafts_proposed += item.drafts
            r.drafts_accepted += len(good)
            if r.is_finished:  # its KV is already freed
                continue
            self.kv_tokens[r.id] = min(self.kv_tokens.get(r.id, 0), r.num_computed)
            if blocks is not None:
                freed = blocks.rollback(r.id, r.num_computed)
                r.kv_capacity = blocks.capacity(r.id)
                if freed:
                    self.freed_blocks[r.id] = freed

    def _release(self, r: Request) -> None:
        """The request lets go of its KV (finished, or preempted to recompute later)."""
        self.freed_blocks[r.id] = self.blocks.free(r.id) if self.blocks is not None else ()
        self._dense_release(r)
        self.kv_tokens.pop(r.id, None)
        self._released.append(r.id)
        r.kv_capacity = 0
