"""Recorder: turns what a step did into its StepRecord (plain data, no tensors).

The record is the only door out of the engine: the dashboard, the headless printer, recordings,
exports and the bench read records, never engine internals. Building one must stay cheap, so the
per-request part is captured lazily (request_views.py) and the KV tables are shared immutable tuples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import attrgetter

from .config import EngineConfig
from .kv.cache import DenseKVCache, PagedKVCache
from .profiling.memory import memory_view
from .records import IdKeyed, KVView, PrefixView, ScheduledItem, StepRecord
from .records.prefix_view import BlockSet
from .request import Request
from .request_views import RequestViews
from .scheduler import SchedulePlan, Scheduler

_by_id = attrgetter("id")


class Recorder:
    def __init__(self, config: EngineConfig, scheduler: Scheduler, kv: PagedKVCache | DenseKVCache,
                 weight_bytes: int, text: Callable[[list[int]], str] | None = None):
        self.config, self.scheduler, self.kv, self.weight_bytes = config, scheduler, kv, weight_bytes
        self.text = text  # a checkpoint tokenizer's decode: output tails as text in the records
        self.finished_total = self.preemptions_total = 0
        self._cached: tuple[int, BlockSet] = (-1, BlockSet(b""))  # (prefix cache version, its cached-free blocks)

    def record(self, step: int, plan: SchedulePlan, items: list[ScheduledItem], finishing: list[Request],
               sampled: dict[int, int], pending: int) -> StepRecord:
        """The step's record. Its requests are those alive in it: running, waiting, and `finishing`
        (finished in this step), in id order; never the run's history, so a record's cost and size
        follow the step's activity."""
        start = time.perf_counter()
        finished = [r.id for r in finishing]
        self.finished_total += len(finished)
        self.preemptions_total += len(plan.preempted)
        sched = self.scheduler
        live = [*sched.running, *sched.waiting, *finishing]
        live.sort(key=_by_id)
        views = RequestViews(live, {i.request_id for i in items}, plan.reasons, self.text)
        decode_tokens, prefill_tokens = plan.tokens("decode"), plan.tokens("prefill")
        record = StepRecord(
            step=step, policy=self.config.policy, budget=plan.budget, decode_tokens=decode_tokens,
            prefill_tokens=prefill_tokens, unused_tokens=plan.budget - decode_tokens - prefill_tokens,
            decode_demand=plan.decode_demand, decode_cap=self.config.max_decode_per_step, items=items,
            requests=views, kv=self._kv_view([r.id for r in plan.preempted] + finished),
            preempted=[r.id for r in plan.preempted], finished=finished, sampled=IdKeyed(sampled),
            running=len(sched.running), waiting=len(sched.waiting), finished_total=self.finished_total,
            pending=pending, padding_slots=sched.padding_slots(), wall_time_s=0.0,
            memory=memory_view(self.kv.device, self.weight_bytes, self.kv.pool_bytes),
            preemptions=list(plan.preemptions), preemptions_total=self.preemptions_total,
            admission_blocked=plan.admission_blocked,
        )
        record.record_time_s = time.perf_counter() - start
        return record

    def _kv_view(self, freed: list[int]) -> KVView:
        kv = self.kv
        tokens = IdKeyed(kv.tokens)
        if isinstance(kv, PagedKVCache):
            a = kv.allocator
            tables = IdKeyed(a.tables)  # immutable tuples: no copies
            freed_blocks = self.scheduler.freed_blocks
            if kv.evicted_now:  # blocks a cache plugin gave back early count as freed this step too
                freed_blocks = dict(freed_blocks)
                for rid, blocks in kv.evicted_now.items():
                    freed_blocks[rid] = freed_blocks.get(rid, ()) + tuple(blocks)
            evicted = IdKeyed({rid: tuple(sorted(s)) for rid, s in a.evicted.items()}) if a.evicted else {}
            return KVView("paged", a.block_size, a.num_blocks, a.num_blocks - a.num_free, a.num_free, tables, tokens,
                          freed, kv.bytes_per_token, kv.pool_bytes, IdKeyed(freed_blocks),
                          self._prefix_view(kv) if kv.prefix is not None else None, evicted,
                          kv.contiguous_up_to, sorted(a.runs) if a.runs else [])
        return KVView("dense", self.config.block_size, 0, 0, 0, {}, tokens, freed, kv.bytes_per_token, kv.pool_bytes)

    def _prefix_view(self, kv: PagedKVCache) -> PrefixView:
        prefix, allocator = kv.prefix, kv.allocator
        assert prefix is not None
        counts, hits = prefix.take_step()
        if self._cached[0] != prefix.version:  # copied when it changes (a map of the pool: bytes)
            self._cached = (prefix.version, BlockSet(bytes(prefix.cached_map)))
        new, allocator.new_blocks = allocator.new_blocks, 0
        return PrefixView({str(b): n for b, n in allocator.shared.items()}, self._cached[1],
                          {str(r): n for r, n in hits.items()}, counts.hit_blocks, counts.hit_tokens,
                          counts.lookup_blocks, counts.lookup_tokens, new, counts.evicted)
