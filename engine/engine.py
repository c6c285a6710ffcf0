"""Engine: requests in, one StepRecord out per step.

A step is the seed's description of one: requests that have arrived join the waiting queue, the
scheduler plans the step under the token budget (decodes first, then prefill chunks), the model
runner runs the packed batch and samples, finished requests leave, and the record says what
happened and why every other request waited.
"""

from __future__ import annotations

import heapq
import time
from typing import TYPE_CHECKING

from .checkpoint import eos_token_ids, is_preset, model_spec
from .config import EngineConfig
from .finished import Requests
from .model import PRESETS
from .model_runner import ModelRunner
from .overlap import PENDING_TOKEN, DeviceTokens, InFlightStep
from .plugins.base import Plugin
from .plugins.host import PluginHost
from .recorder import Recorder
from .records import IdKeyed, RunHeader, ScheduledItem, StepRecord
from .request import Request
from .request_checks import check_request
from .scheduler import SchedulePlan, Scheduler
from .speculation.acceptance import Proposal
from .speculation.speculator import make_speculator
from .tokenizer import ByteTokenizer, tokenizer_for

if TYPE_CHECKING:
    from .distributed.driver import ShardedRunner

STALL_STEPS = 4  # steps in a row with nothing scheduled (and nothing still to arrive) that end a run


class NoProgressError(RuntimeError):
    """Nothing can run any more although requests wait: the message says which, and why."""


def _why_stuck(record: StepRecord, steps: int) -> str:
    waits = [f"request {v.id}: {v.reason}" for v in record.requests if v.reason and v.state != "pending"]
    more = f"; and {len(waits) - 3} more" if len(waits) > 3 else ""
    return (f"no progress for {steps} steps (to step {record.step}): {record.waiting + record.running} requests "
            f"cannot be scheduled ({'; '.join(waits[:3])}{more})")


class Engine:
    def __init__(self, config: EngineConfig | None = None, plugins: list[Plugin] | None = None):
        if config is not None and not isinstance(config, EngineConfig):
            raise ValueError(f"Engine takes an EngineConfig, not {type(config).__name__}; "
                             f"e.g. Engine(EngineConfig(model={config!r}))")
        self.config = config = config or EngineConfig()
        if config.overlap_steps and plugins:
            raise ValueError("overlap_steps=True cannot run plugins (they see every step as it ends); "
                             "drop the plugins or overlap_steps")
        spec = model_spec(config.model)  # a checkpoint's config.json is read here, before any weight
        if config.eos_token_id is not None and config.eos_token_id >= spec.vocab_size:
            raise ValueError(f"eos_token_id={config.eos_token_id} is outside the vocabulary of model {spec.name!r} "
                             f"(0..{spec.vocab_size - 1})")
        stop_ids = self._stop_ids(config, spec.vocab_size)
        draft = PRESETS[config.draft_model]
        if config.speculative == "draft" and draft.vocab_size != spec.vocab_size:
            raise ValueError(f"draft_model={config.draft_model!r} has a vocabulary of {draft.vocab_size} tokens, model "
                             f"{spec.name!r} one of {spec.vocab_size}; a draft must share the target's vocabulary "
                             f"(for 'tiny': 'micro' or 'tiny')")
        self.tokenizer = tokenizer_for(config.model)  # bytes for a preset, the checkpoint's tokenizer.json
        self.plugins = PluginHost(list(plugins or []), config, spec.num_layers)
        self.sharded: ShardedRunner | None = None  # KV sharded over worker processes (engine/distributed)
        if config.shards > 1:
            from .distributed.driver import ShardedRunner

            self.runner: ModelRunner = ShardedRunner(config, self.plugins)
            self.sharded = self.runner
        else:
            self.runner = ModelRunner(config, self.plugins)
        self.speculator = make_speculator(config, self.runner.kv, self.runner.device, self.runner.dtype,
                                          self.runner.attention)
        self.scheduler = Scheduler(config, self.runner.kv, stop_ids, self.speculator)
        # Output tails are ids; a real tokenizer's text goes into the records too (widgets cannot decode it).
        text = None if isinstance(self.tokenizer, ByteTokenizer) else self.tokenizer.decode
        self.recorder = Recorder(config, self.scheduler, self.runner.kv, self.runner.weight_bytes, text)
        self.requests = Requests()  # every request given, by id; finished ones compact
        self.pending: list[tuple[int, int, Request]] = []  # heap of (arrival step, id, request) not arrived yet
        self.step_index = 0
        self._next_id = 0
        self._in_flight: InFlightStep | None = None  # overlap: the launched step not yet read back
        self._idle_steps = 0  # consecutive steps in which nothing could run

    @staticmethod
    def _stop_ids(config: EngineConfig, vocab_size: int) -> frozenset[int]:
        """The ids that end a request: eos_token_id if set, else the checkpoint's; none with ignore_eos."""
        if config.ignore_eos:
            return frozenset()
        if config.eos_token_id is not None:
            return frozenset([config.eos_token_id])
        ids = frozenset(i for i in eos_token_ids(config.model) if i < vocab_size)
        if ids and config.overlap_steps:
            raise ValueError(f"overlap_steps=True needs requests that end at max_new_tokens, but model "
                             f"{config.model!r} ends sequences at token {min(ids)}; set ignore_eos=True")
        return ids

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
        r, c = self.runner, self.config
        name = c.model if is_preset(c.model) else self.runner.spec.name  # a checkpoint: its directory's name
        return RunHeader(model=name, checkpoint=None if is_preset(c.model) else c.model, device=r.device.type,
                         dtype=str(r.dtype).removeprefix("torch."),
                         attention=r.attention_name, kv_layout=c.kv_layout, policy=c.policy,
                         max_tokens_per_step=c.max_tokens_per_step, prefill_chunk_size=c.prefill_chunk_size,
                         block_size=c.block_size, num_blocks=r.num_blocks, prefix_caching=c.caches_prefixes,
                         decode_path=r.decode_path(),
                         plugins=[p.name for p in self.plugins.plugins], title=title,
                         speculative=self._speculative_label(),
                         description=description, question=question, variant=variant,
                         shards=c.shards, shard_by=c.shard_by if c.shards > 1 else "",
                         contiguous_up_to=c.contiguous_up_to)

    def _speculative_label(self) -> str:
        c = self.config
        if c.speculative is None:
            return ""
        draft = f" {c.draft_model}" if c.speculative == "draft" else ""
        return f"{c.speculative}{draft} k={c.num_speculative_tokens}"

    # -- requests -------------------------------------------------------------------------
    def add_request(self, prompt: list[int] | str, max_new_tokens: int = 16, arrival_step: int = 0,
                    priority: int = 0, request_id: int | None = None, temperature: float = 0.0,
                    top_k: int = 0, seed: int | None = None, deadline_step: int | None = None) -> int:
        """Queues a request; returns its id. Raises ValueError naming what is wrong, and then changes nothing."""
        tokens = self.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        check_request(self.config, self.runner.spec, self.runner.kv, self.requests, tokens, max_new_tokens,
                      arrival_step, priority, request_id, temperature, top_k, seed, deadline_step)
        # A request added mid-run arrives no earlier than now: TTFT counts from when it exists.
        arrival_step = max(arrival_step, self.step_index)
        rid = self._next_id if request_id is None else request_id
        self._next_id = max(self._next_id, rid) + 1
        req = Request(rid, list(tokens), max_new_tokens, arrival_step, priority, temperature, top_k, seed,
                      deadline_step)
        self.requests.live[rid] = req
        heapq.heappush(self.pending, (arrival_step, rid, req))
        self.runner.add_sampler(req)
        return rid

    def has_unfinished(self) -> bool:
        return bool(self.pending or self.scheduler.waiting or self.scheduler.running or self._in_flight)

    # -- one step -------------------------------------------------------------------------
    def step(self) -> StepRecord | None:
        """Runs one scheduler step and returns its record.

        With overlap_steps, launches the step and returns the previous one's record, complete,
        once its tokens are read back; None when there is none yet (the first call)."""
        start = time.perf_counter()
        step = self.step_index
        self._admit_arrivals(step, start)
        state = self.scheduler.state(step)
        self.plugins.before_step(state)
        plan = self.scheduler.schedule(state)
        if self._in_flight is not None and not plan.items:
            # Nothing to launch behind the step in flight: hand its record over first; this step
            # is scheduled again on the next call.
            return self._resolve_in_flight()
        if self.speculator is not None and plan.preempted:
            self.speculator.preempted(plan.preempted)
        proposals = self.speculator.propose(plan.drafts) if plan.drafts and self.speculator else {}
        items, tokens, samples = self._batch(plan, proposals)
        sampling = [s.request for s, flag in zip(plan.items, samples, strict=True) if flag]
        kept: dict[Request, list[int]] = {}
        if proposals:
            chosen, accepted = self.runner.run_speculative(items, tokens, samples, sampling,
                                                           [proposals.get(r) for r in sampling],
                                                           self.scheduler.stop_ids)
            kept = {r: good for r, good in zip(sampling, accepted, strict=True) if r in proposals}
            tokens_out: list[int] | DeviceTokens = chosen
        else:
            tokens_out = self.runner.run(items, tokens, samples, sampling) if plan.items else []
        on_host = isinstance(tokens_out, list)
        chosen = tokens_out if isinstance(tokens_out, list) else [PENDING_TOKEN] * len(sampling)
        done = self.scheduler.postprocess(step, plan, samples, chosen, now=time.perf_counter() if on_host else None,
                                          kept=kept)
        for r in done.finishing:
            self.runner.free(r.id)
            if self.speculator is not None:
                self.speculator.free(r.id)
            self.plugins.on_request_completion(r)
        if proposals:
            assert self.speculator is not None
            self._settle(items, proposals, kept)
        sampled = dict(zip((r.id for r in sampling), chosen, strict=True)) if on_host else {}
        record = self.recorder.record(step, plan, items, done.finishing, sampled, len(self.pending))
        if kept:
            record.kept_drafts = IdKeyed({r.id: good for r, good in kept.items() if good})
        if self.sharded is not None:
            self.sharded.describe(record)  # per-shard pools and memory, the step's communication
        self.plugins.after_step(state, record)
        record.annotations = state.annotations + self.plugins.descriptions()
        record.errors = self.plugins.take_errors()
        if plan.items:
            record.decode_graph = self.runner.last_graph_bucket()
            record.device_time_s = self.runner.take_device_seconds()
        self._idle_steps = self._idle_steps + 1 if self._stalled(record) else 0
        if self._idle_steps:
            # Nothing ran although requests are waiting and none is still to arrive (a reserved slice
            # cannot cause it: the scheduler lifts one that would leave a step empty). Say so, and end
            # the run once it clearly cannot move.
            record.errors.append(f"no progress: {record.waiting + record.running} requests could not be "
                                 f"scheduled at step {step}")
            if self._idle_steps >= STALL_STEPS:
                raise NoProgressError(_why_stuck(record, self._idle_steps))
        self.step_index += 1
        record.wall_time_s = time.perf_counter() - start
        if isinstance(tokens_out, DeviceTokens):
            launched = InFlightStep(record, tokens_out, sampling, done.positions, done.first_token, done.finishing)
            previous = self._resolve_in_flight()  # the previous step's record, while this one runs
            self._in_flight = launched
            return previous
        for r in done.finishing:
            self.requests.finish(r)
        return record

    def _admit_arrivals(self, step: int, now: float) -> None:
        while self.pending and self.pending[0][0] <= step:
            req = heapq.heappop(self.pending)[2]
            req.arrival_time = now
            self.scheduler.add_arrived(req)

    def _settle(self, items: list[ScheduledItem], proposals: dict[Request, Proposal],
                kept: dict[Request, list[int]]) -> None:
        """After a speculative step: the record's accepted counts, the requests' totals, and the
        rejected drafts' KV rolled back (emptied blocks show as freed in the record)."""
        assert self.speculator is not None
        accepted = {r.id: len(good) for r, good in kept.items()}
        for item in items:
            if item.drafts:
                item.accepted = accepted[item.request_id]
        for rid, blocks in self.speculator.settle(proposals, kept).items():
            self.scheduler.freed_blocks[rid] = blocks

    @staticmethod
    def _batch(plan: SchedulePlan, proposals: dict[Request, Proposal]
               ) -> tuple[list[ScheduledItem], list[list[int]], list[bool]]:
        """Each item's record entry, the tokens it feeds, and whether it samples afterwards."""
        items, tokens, samples = [], [], []
        for s in plan.items:
            r, n, first = s.request, s.num_tokens, s.request.num_computed
            if s.kind == "decode":  # feeds its last generated token, then samples (the hot case)
                if n == 1:
                    items.append(ScheduledItem(r.id, "decode", first, 1, first + 1))
                    tokens.append(r.output[-1:])
                else:  # speculating: its last token, then the drafts it verifies
                    drafts = proposals[r][0]
                    items.append(ScheduledItem(r.id, "decode", first, n, first + n, drafts=n - 1))
                    tokens.append(r.output[-1:] + drafts)
                samples.append(True)
                continue
            items.append(ScheduledItem(r.id, s.kind, first, n, first + n))
            tokens.append(r.token_slice(first, n))
            samples.append(first + n == len(r.prompt) + len(r.output))
        return items, tokens, samples

    def _resolve_in_flight(self) -> StepRecord | None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return None
        record = in_flight.resolve()
        for r in in_flight.finishing:  # their last tokens are in now
            self.requests.finish(r)
        return record

    def _stalled(self, record: StepRecord) -> bool:
        """Nothing ran although requests wait and none is still to arrive."""
        return not record.items and not self.pending and bool(self.scheduler.waiting or self.scheduler.running)

    # -- whole runs -----------------------------------------------------------------------
    def run_until_done(self, max_steps: int | None = None) -> dict[int, list[int]]:
        """Steps until every request finished; returns {request id: generated token ids}."""
        if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)):
            raise ValueError(f"max_steps={max_steps!r} must be an integer or None")
        while self.has_unfinished():
            if max_steps is not None and self.step_index >= max_steps:
                break
            self.step()  # raises NoProgressError when nothing can ever run again
        self._resolve_in_flight()  # stopped at max_steps with a step in flight: its tokens, not placeholders
        return self.outputs()

    def outputs(self) -> dict[int, list[int]]:
        return {rid: list(self.requests[rid].output) for rid in sorted(self.requests)}
