"""Engine: requests in, one StepRecord out per step.

A step is the textbook's: requests that have arrived join the waiting queue, the scheduler plans
the step under the token budget (decodes first, then prefill chunks) and decides every KV block,
the runner runs the plan and samples, the scheduler's update moves the requests on (finished ones
leave, their blocks go back), and the recorder says what happened and why every other request
waited:

    plan   = scheduler.schedule(step)
    out    = runner.run(plan)
    events = scheduler.update(plan, out.sampled, out.kept, now)
    record = recorder.build(plan, out, events, pending)
"""

from __future__ import annotations

import heapq
import time
from typing import Any

from .config import EngineConfig
from .kv.block_manager import BlockManager
from .kv.paged_store import PagedKVStore
from .live_changes import LiveChanges
from .models.source import model_spec, tokenizer_for
from .models.tokenizer import ByteTokenizer
from .overlapped_steps import OverlappedSteps
from .plugins.base import Plugin
from .plugins.host import PluginHost
from .recorder import Recorder, run_header
from .records import RunHeader, StepRecord
from .requests.checks import check_request
from .requests.finished import Requests
from .requests.request import Request, RequestState
from .requests.stop_strings import StopStrings, check_stop
from .runner.model_runner import ModelRunner
from .runner.output import StepOutput
from .scheduler.plan import SchedulePlan, StepEvents
from .scheduler.scheduler import Scheduler

STALL_STEPS = 4  # steps in a row with nothing scheduled (and nothing still to arrive) that end a run


class NoProgressError(RuntimeError):
    """Nothing can run any more although requests wait: the message says which, and why."""


def _why_stuck(record: StepRecord, steps: int) -> str:
    waits = [f"request {v.id}: {v.reason}" for v in record.requests if v.reason and v.state != "pending"]
    more = f"; and {len(waits) - 3} more" if len(waits) > 3 else ""
    return (f"no progress for {steps} steps (to step {record.step}): {record.waiting + record.running} requests "
            f"cannot be scheduled ({'; '.join(waits[:3])}{more})")


def make_runner(config: EngineConfig, plugins: PluginHost) -> ModelRunner:
    if config.parallel is not None:  # KV sharded over worker processes (engine/distributed)
        from .distributed.driver import ShardedRunner

        return ShardedRunner(config, plugins)
    return ModelRunner(config, plugins)


def make_block_manager(config: EngineConfig, num_blocks: int) -> BlockManager | None:
    """The scheduler's block manager, sized as the runner's store (None: dense, no blocks)."""
    cache, parallel = config.cache, config.parallel
    if cache.kv_layout != "paged":
        return None
    if parallel is not None and parallel.shard_by == "sequence":
        from .kv.round_robin_blocks import RoundRobinBlocks

        return RoundRobinBlocks(parallel.shards, num_blocks, cache.block_size)
    return BlockManager(num_blocks, cache.block_size, config.caches_prefixes, cache.contiguous_up_to)


class Engine:
    def __init__(self, config: EngineConfig | None = None, plugins: list[Plugin] | None = None):
        if config is not None and not isinstance(config, EngineConfig):
            raise ValueError(f"Engine takes an EngineConfig, not {type(config).__name__}; "
                             f"e.g. Engine(EngineConfig(model={config!r}))")
        self.config = config = config or EngineConfig()
        if config.runner.overlap_steps and plugins:
            raise ValueError("overlap_steps=True cannot run plugins (they see every step as it ends); "
                             "drop the plugins or overlap_steps")
        num_layers = model_spec(config.llm.name).num_layers  # a checkpoint's config.json is read before any weight
        self.tokenizer = tokenizer_for(config.llm.name)  # bytes for a preset, the real model's tokenizer.json
        self.plugins = PluginHost(list(plugins or []), config, num_layers)
        self.runner = make_runner(config, self.plugins)
        self.scheduler = Scheduler(config.scheduler, make_block_manager(config, self.runner.num_blocks), self.plugins,
                                   self.runner.stop_ids, self.speculator.wanted if self.speculator else None,
                                   dense_tokens=self.runner.dense_tokens)
        # Output tails are ids; a real tokenizer's text goes into the records too (widgets cannot decode it).
        text = None if isinstance(self.tokenizer, ByteTokenizer) else self.tokenizer.decode
        kv = self.runner.kv
        self.recorder = Recorder(config, self.scheduler, self.runner.device, self.runner.weight_bytes,
                                 kv.bytes_per_token, kv.pool_bytes if isinstance(kv, PagedKVStore) else 0, text)
        self.requests = Requests()  # every request given, by id; finished ones compact
        self.pending: list[tuple[int, int, Request]] = []  # heap of (arrival step, id, request) not arrived yet
        self.step_index = 0
        self._next_id = 0
        self._idle_steps = 0  # consecutive steps in which nothing could run
        self.changes = LiveChanges()  # settings to change at a coming step (reconfigure)
        # Overlapped steps wrap the synchronous step: each record comes one call later.
        self.overlapped = OverlappedSteps(self) if config.runner.overlap_steps else None

    @property
    def speculator(self):
        return self.runner.speculator

    def close(self) -> None:
        """Stops the engine's worker processes, if it has any (sharded); idempotent. Garbage collection
        and the process's exit do it too."""
        self.runner.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def header(self, title: str = "", description: str = "", question: str = "",
               variant: str | None = None) -> RunHeader:
        """The run's settings as resolved (device, dtype, backend, fast path), plus what the caller says
        of the scenario (title, description, question, variant)."""
        return run_header(self.config, self.runner, [p.name for p in self.plugins.plugins], title=title,
                          description=description, question=question, variant=variant)

    # -- requests -------------------------------------------------------------------------
    def add_request(self, prompt: list[int] | str, max_new_tokens: int = 16, arrival_step: int = 0,
                    priority: int = 0, request_id: int | None = None, temperature: float = 0.0,
                    top_k: int = 0, seed: int | None = None, deadline_step: int | None = None,
                    top_p: float = 1.0, stop: str | list[str] | None = None) -> int:
        """Queues a request; returns its id. Raises ValueError naming what is wrong, and then changes nothing.
        `stop`: strings that end the request at the step whose token completes one in its decoded text."""
        tokens = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        check_request(self.config, self.runner.spec, self.scheduler.blocks, self.requests, tokens, max_new_tokens,
                      arrival_step, priority, request_id, temperature, top_k, seed, deadline_step,
                      dense_tokens=self.scheduler.dense_tokens, top_p=top_p)
        stop_strings = check_stop(stop)
        # A request added mid-run arrives no earlier than now: TTFT counts from when it exists.
        arrival_step = max(arrival_step, self.step_index)
        rid = self._next_id if request_id is None else request_id
        self._next_id = max(self._next_id, rid) + 1
        req = Request(rid, list(tokens), max_new_tokens, arrival_step, priority, temperature, top_k, seed,
                      deadline_step, top_p, StopStrings(stop_strings, self.tokenizer.text) if stop_strings else None)
        self.requests.live[rid] = req
        heapq.heappush(self.pending, (arrival_step, rid, req))
        self.runner.add_sampler(req)
        return rid

    def abort(self, request_id: int) -> None:
        """Stops a request before the next step: its KV is freed then, its tokens so far kept, and
        that step's record says so. ValueError (one line) for a request that is not alive."""
        r = self.requests.live.get(request_id) if isinstance(request_id, int) else None
        if r is None:
            raise ValueError(f"request {request_id!r} cannot be aborted: it is not pending, waiting or running")
        if self.overlapped is not None:
            raise ValueError("abort needs synchronous steps: overlap_steps=True runs one step ahead")
        if r.state is RequestState.PENDING:
            self.pending = [entry for entry in self.pending if entry[2] is not r]
            heapq.heapify(self.pending)
        self.scheduler.abort(r)

    def reconfigure(self, at_step: int | None = None, **changes: Any) -> None:
        """Changes settings that may change mid-run (flat names: max_tokens_per_step=96), from step
        `at_step` on (default: the next). ValueError (one line), and nothing changes, for a setting
        that cannot, a value out of range, or a step in the past."""
        if self.overlapped is not None:
            raise ValueError("settings change between synchronous steps: overlap_steps=True runs one step ahead")
        step = self.step_index if at_step is None else at_step
        self.changes.schedule(self.config, step, self.step_index, changes)

    def has_unfinished(self) -> bool:
        in_flight = self.overlapped is not None and self.overlapped.in_flight is not None
        return bool(self.pending or self.scheduler.waiting or self.scheduler.running or in_flight)

    # -- one step -------------------------------------------------------------------------
    def step(self) -> StepRecord | None:
        """Runs one scheduler step and returns its record.

        With overlap_steps, launches the step and returns the previous one's record, complete,
        once its tokens are read back; None when there is none yet (the first call)."""
        if self.overlapped is not None:
            return self.overlapped.step()
        plan, out, events, start = self.launch_step()
        record = self.record_step(plan, out, events, start)
        for r in [*events.finishing, *plan.aborted]:
            self.requests.finish(r)
        return record

    def launch_step(self) -> tuple[SchedulePlan, StepOutput, StepEvents, float]:
        """schedule -> run -> update. Tokens still on the device (overlapped) are placeholders in
        the outputs until OverlappedSteps resolves them."""
        start = time.perf_counter()
        changed = self._reconfigured()
        self._admit_arrivals(start)
        plan = self.scheduler.schedule(self.step_index)
        plan.changes = changed
        out = self.runner.run(plan)
        events = self.scheduler.update(plan, out.sampled, out.kept, None if out.on_device else time.perf_counter())
        return plan, out, events, start

    def record_step(self, plan: SchedulePlan, out: StepOutput, events: StepEvents, start: float) -> StepRecord:
        """The step's record, with what the plugins add to it."""
        record = self.recorder.build(plan, out, events, len(self.pending))
        self.plugins.after_step(plan.state, record)
        annotations, errors, window = self.plugins.notes(plan.state)
        self.recorder.finish(record, (annotations, errors + self._progress(record), window), start)
        self.step_index += 1
        return record

    def _reconfigured(self) -> list[str]:
        """Settings due at this step, given to the parts that read them; each change as told."""
        config, told = self.changes.apply(self.config, self.step_index)
        if config is not self.config:
            self.config = config
            self.scheduler.reconfigure(config.scheduler)
            if self.speculator is not None and config.speculation is not None:
                self.speculator.k = config.speculation.num_speculative_tokens
        return told

    def _admit_arrivals(self, now: float) -> None:
        while self.pending and self.pending[0][0] <= self.step_index:
            req = heapq.heappop(self.pending)[2]
            req.arrival_time = now
            self.scheduler.add_arrived(req)

    def _progress(self, record: StepRecord) -> list[str]:
        """Nothing ran although requests wait and none is still to arrive (a reserved slice cannot
        cause it: the scheduler lifts one that would leave a step empty): said in the record, and
        the run ends once it clearly cannot move."""
        stalled = not record.items and not self.pending and bool(self.scheduler.waiting or self.scheduler.running)
        self._idle_steps = self._idle_steps + 1 if stalled else 0
        if not self._idle_steps:
            return []
        if self._idle_steps >= STALL_STEPS:
            raise NoProgressError(_why_stuck(record, self._idle_steps))
        return [f"no progress: {record.waiting + record.running} requests could not be scheduled at step "
                f"{record.step}"]

    # -- whole runs -----------------------------------------------------------------------
    def run_until_done(self, max_steps: int | None = None) -> dict[int, list[int]]:
        """Steps until every request finished; returns {request id: generated token ids}."""
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)):
            raise ValueError(f"max_steps={max_steps!r} must be an integer or None")
        while self.has_unfinished():
            if max_steps is not None and self.step_index >= max_steps:
                break
            self.step()  # raises NoProgressError when nothing can ever run again
        if self.overlapped is not None:  # stopped at max_steps with a step in flight: its tokens, not placeholders
            self.overlapped.resolve()
        return self.outputs()

    def outputs(self) -> dict[int, list[int]]:
        return {rid: list(self.requests[rid].output) for rid in sorted(self.requests)}
