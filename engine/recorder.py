"""Recorder: turns what a step did into its StepRecord (plain data, no tensors).

The record is the only door out of the engine: the dashboard, the headless printer, recordings,
exports and the bench read records, never engine internals. The recorder is the one writer of a
record: it reads the plan, the runner's output, the scheduler's events and the block manager's
step activity as they are, and changes none of them. Building one must stay cheap, so the
per-request part is captured as plain values and built lazily (requests/views.py), and the KV
tables are shared immutable tuples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import torch

from .config import EngineConfig
from .kv.block_manager import BlockManager
from .kv.round_robin_blocks import RoundRobinBlocks
from .models.checkpoint import is_preset
from .profiling.memory import memory_view
from .records import IdKeyed, KVView, PrefixView, RunHeader, ShardView, StepRecord
from .records.prefix_view import BlockSet
from .requests.request import Request
from .requests.views import RequestViews
from .runner.output import StepOutput
from .scheduler.plan import SchedulePlan, StepEvents
from .scheduler.scheduler import Scheduler

if TYPE_CHECKING:
    from .runner.model_runner import ModelRunner

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
        live: list[Request] = [*sched.running, *sched.waiting, *finishing, *plan.aborted]
        live.sort(key=_by_id)
        views = RequestViews(live, {i.request_id for i in plan.batch}, plan.reasons, self.text)
        decode_tokens, prefill_tokens = plan.tokens_of("decode"), plan.tokens_of("prefill")
        kv = self._kv_view([r.id for r in plan.preempted] + finished + [r.id for r in plan.aborted])
        memory = memory_view(self.device, self.weight_bytes, kv.pool_bytes)  # this process's pool
        shards = shard_views(self.blocks, self.pool_bytes, out.shard_memory) \
            if out.shard_memory and self.blocks is not None else []
        if shards:
            kv.pool_bytes = sum(s.pool_bytes for s in shards)  # every shard's pool together
        sampled = {} if out.on_device is not None else dict(zip((r.id for r in plan.sampling), out.sampled,
                                                                 strict=True))
        record = StepRecord(
            step=plan.step, policy=self.config.scheduler.policy, budget=plan.budget, decode_tokens=decode_tokens,
            prefill_tokens=prefill_tokens, unused_tokens=plan.budget - decode_tokens - prefill_tokens,
            decode_demand=plan.decode_demand, decode_cap=self.config.scheduler.max_decode_per_step, items=plan.batch,
            requests=views, kv=kv, preempted=[r.id for r in plan.preempted], finished=finished,
            sampled=IdKeyed(sampled), running=len(sched.running), waiting=len(sched.waiting),
            finished_total=self.finished_total, pending=pending,
            padding_slots=sched.admission.padding_slots(finishing),  # read after update: who finished in it ran
            wall_time_s=0.0, memory=memory,
            preemptions=list(plan.preemptions), preemptions_total=self.preemptions_total,
            admission_blocked=plan.admission_blocked,
            kept_drafts=IdKeyed({r.id: good for r, good in out.kept.items() if good}) if out.kept else {},
            decode_graph=out.graph_bucket, device_time_s=out.device_time_s, shards=shards, comm=out.comm,
            aborted=[r.id for r in plan.aborted], changes=plan.changes,
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
            return KVView("dense", self.config.cache.block_size, 0, 0, 0, {}, tokens, freed, self.bytes_per_token,
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


def shard_views(blocks: BlockManager, pool_bytes: int, memory: list[tuple[str, int]]) -> list[ShardView]:
    """The shards of a step as its record shows them, from the block manager's tables: one view per
    shard. pool_bytes: one shard's pool; memory: (device, bytes in use) per shard, as measured."""
    views = []
    for rank, (device, used_bytes) in enumerate(memory):
        if isinstance(blocks, RoundRobinBlocks):  # sequence: each shard its own blocks
            per = blocks.blocks_per_shard
            free = len(blocks.shard_free[rank])
            low, high = rank * per, (rank + 1) * per
            tables = {rid: tuple(b - low for b in t if low <= b < high) for rid, t in blocks.tables.items()}
            views.append(ShardView(rank, device, per, per - free, free, pool_bytes, used_bytes, low,
                                   IdKeyed(tables)))
        else:  # heads: the same tables on every shard
            free = blocks.num_free
            views.append(ShardView(rank, device, blocks.num_blocks, blocks.num_blocks - free, free, pool_bytes,
                                   used_bytes, 0, IdKeyed(blocks.tables)))
    return views


def run_header(c: EngineConfig, r: ModelRunner, plugins: list[str], **scenario: Any) -> RunHeader:
    """The run's settings as the runner resolved them (device, dtype, backend, fast path), plus what
    the caller says of the scenario (title, description, question, variant)."""
    name = c.llm.name if is_preset(c.llm.name) else r.spec.name  # a checkpoint: its directory's name
    speculative = ""
    if (s := c.speculation) is not None:
        draft = f" {s.draft_model}" if s.method == "draft" else ""
        speculative = f"{s.method}{draft} k={s.num_speculative_tokens}"
    sched, cache, parallel = c.scheduler, c.cache, c.parallel
    return RunHeader(model=name, checkpoint=None if is_preset(c.llm.name) else c.llm.name, device=r.device.type,
                     dtype=str(r.dtype).removeprefix("torch."), attention=r.attention_name,
                     kv_layout=cache.kv_layout, policy=sched.policy, max_tokens_per_step=sched.max_tokens_per_step,
                     prefill_chunk_size=sched.prefill_chunk_size, block_size=cache.block_size,
                     num_blocks=r.num_blocks, prefix_caching=c.caches_prefixes, decode_path=r.decode_path(),
                     plugins=plugins, speculative=speculative,
                     shards=parallel.shards if parallel else 1, shard_by=parallel.shard_by if parallel else "",
                     contiguous_up_to=cache.contiguous_up_to, **scenario)
