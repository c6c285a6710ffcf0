"""Recorder: turns what a step did into its StepRecord (plain data, no tensors).

The record is the only door out of the engine: the dashboard, the headless printer, recordings,
exports and the bench read records, never engine internals. The recorder is the one writer of a
record: it reads the plan, the runner's output, the scheduler's events and the block manager's
step activity as they are, and changes none of them. Building one must stay cheap, so the
per-request part is captured lazily (request_views.py) and the KV tables are shared immutable tuples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import attrgetter

import torch

from .config import EngineConfig
from .distributed.views import shard_views
from .kv.block_manager import BlockManager
from .profiling.memory import memory_view
from .records import IdKeyed, KVView, PrefixView, StepRecord
from .records.prefix_view import BlockSet
from .request import Request
from .request_views import RequestViews
from .schedule_plan import SchedulePlan, StepEvents
from .scheduler import Scheduler
from .step_output import StepOutput

_by_id = attrgetter("id")


class Recorder:
    def __init__(self, config: EngineConfig, scheduler: Scheduler, device: torch.device, weight_bytes: int,
                 bytes_per_token: int, pool_bytes: int, text: Callable[[list[int]], str] | None = None):
        """pool_bytes: what the paged store's pools take (ignored for dense, which grows: its bytes are
        its tokens'); text: a checkpoint tokenizer's decode, for output tails as text."""
        self.config, self.scheduler, self.blocks = config, scheduler, scheduler.blocks
        self.device, self.weight_bytes = device, weight_bytes
        self.bytes_per_token, self.pool_bytes = bytes_per_token, pool_bytes
        self.text = text
        self.finished_total = self.preemptions_total = 0
        self._cached: tuple[int, BlockSet] = (-1, BlockSet(b""))  # (prefix cache version, its cached-free blocks)

    def build(self, plan: SchedulePlan, out: StepOutput, events: StepEvents, pending: int) -> StepRecord:
        """The step's record. Its requests are those alive in it: running, waiting, and those that
        finished in it, in id order; never the run's history, so a record's cost and size follow
        the step's activity."""
        start = time.perf_counter()
        finishing = events.finishing
        finished = [r.id for r in finishing]
        self.finished_total += len(finished)
        self.preemptions_total += len(plan.preempted)
        sched = self.scheduler
        live: list[Request] = [*sched.running, *sched.waiting, *finishing]
        live.sort(key=_by_id)
        views = RequestViews(live, {i.request_id for i in plan.batch}, plan.reasons, self.text)
        decode_tokens, prefill_tokens = plan.tokens_of("decode"), plan.tokens_of("prefill")
        kv = self._kv_view([r.id for r in plan.preempted] + finished)
        memory = memory_view(self.device, self.weight_bytes, kv.pool_bytes)  # this process's pool
        shards = shard_views(self.blocks, self.config.shards, self.pool_bytes, out.shard_memory) \
            if out.shard_memory and self.blocks is not None else []
        if shards:
            kv.pool_bytes = sum(s.pool_bytes for s in shards)  # every shard's pool together
        sampled = {} if out.on_device is not None else dict(zip((r.id for r in plan.sampling), out.sampled,
                                                                 strict=True))
        record = StepRecord(
            step=plan.step, policy=self.config.policy, budget=plan.budget, decode_tokens=decode_tokens,
            prefill_tokens=prefill_tokens, unused_tokens=plan.budget - decode_tokens - prefill_tokens,
            decode_demand=plan.decode_demand, decode_cap=self.config.max_decode_per_step, items=plan.batch,
            requests=views, kv=kv, preempted=[r.id for r in plan.preempted], finished=finished,
            sampled=IdKeyed(sampled), running=len(sched.running), waiting=len(sched.waiting),
            finished_total=self.finished_total, pending=pending,
            padding_slots=sched.admission.padding_slots(finishing),  # read after update: who finished in it ran
            wall_time_s=0.0, memory=memory,
            preemptions=list(plan.preemptions), preemptions_total=self.preemptions_total,
            admission_blocked=plan.admission_blocked,
            kept_drafts=IdKeyed({r.id: good for r, good in out.kept.items() if good}) if out.kept else {},
            decode_graph=out.graph_bucket, device_time_s=out.device_time_s, shards=shards, comm=out.comm,
        )
        record.record_time_s = time.perf_counter() - start
        return record

    @staticmethod
    def finish(record: StepRecord, notes: tuple[list[str], list[str], list[int] | None], started: float) -> None:
        """The last of the record, once plugins have seen it: their notes (the header's annotations,
        errors, a sliding window) and the step's whole time."""
        record.annotations, record.errors, record.attention_window = notes
        record.wall_time_s = time.perf_counter() - started

    @staticmethod
    def sampled(record: StepRecord, request_ids: list[int], tokens: list[int]) -> None:
        """An overlapped step's tokens, once they reached the host: in the record, and in the output
        tails in place of their placeholders."""
        sampled = dict(zip(request_ids, tokens, strict=True))
        record.sampled = IdKeyed(sampled)
        assert isinstance(record.requests, RequestViews)
        record.requests.fill_pending(sampled)

    def _kv_view(self, freed: list[int]) -> KVView:
        held = self.scheduler.kv_tokens
        tokens = IdKeyed(held)
        blocks = self.blocks
        if blocks is None:
            return KVView("dense", self.config.block_size, 0, 0, 0, {}, tokens, freed, self.bytes_per_token,
                          sum(held.values()) * self.bytes_per_token)
        freed_blocks: dict[int, tuple[int, ...]] = self.scheduler.freed_blocks
        if blocks.evicted_now:  # blocks a cache plugin gave back early count as freed this step too
            freed_blocks = dict(freed_blocks)
            for rid, gone in blocks.evicted_now.items():
                freed_blocks[rid] = freed_blocks.get(rid, ()) + tuple(gone)
        evicted = IdKeyed({rid: tuple(sorted(s)) for rid, s in blocks.evicted.items()}) if blocks.evicted else {}
        free = blocks.num_free
        return KVView("paged", blocks.block_size, blocks.num_blocks, blocks.num_blocks - free, free,
                      IdKeyed(blocks.tables), tokens, freed, self.bytes_per_token, self.pool_bytes,
                      IdKeyed(freed_blocks), self._prefix_view(blocks) if blocks.prefix is not None else None,
                      evicted, blocks.contiguous_up_to, sorted(blocks.runs) if blocks.runs else [])

    def _prefix_view(self, blocks: BlockManager) -> PrefixView:
        prefix = blocks.prefix
        assert prefix is not None
        counts = prefix.counts
        if self._cached[0] != prefix.version:  # copied when it changes (a map of the pool: bytes)
            self._cached = (prefix.version, BlockSet(bytes(prefix.cached_map)))
        return PrefixView({str(b): n for b, n in blocks.shared.items()}, self._cached[1],
                          {str(r): n for r, n in prefix.hits.items()}, counts.hit_blocks, counts.hit_tokens,
                          counts.lookup_blocks, counts.lookup_tokens, blocks.new_blocks, counts.evicted)
