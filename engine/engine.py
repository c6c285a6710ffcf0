"""Engine: owns the model, the KV cache and the scheduler; `step()` runs one scheduler step."""

from __future__ import annotations

import time

import torch

from . import tokenizer
from .attention import get_backend, resolve_backend
from .attention.decode_kernel import choose_decode_attention
from .attention.layer_attention import PackedAttention, PoolAttention
from .batch_builder import build_batch
from .config import EngineConfig
from .decode_graphs import DecodeGraphs
from .device_timer import DeviceTimer
from .kv.cache import DenseKVCache, PagedKVCache, kv_bytes_per_token
from .profiling.memory import memory_view
from .model import PRESETS, build_model
from .overlap import PENDING_TOKEN, InFlightStep, feed_pending_tokens, sample_in_flight
from .plugins.host import PluginHost
from .records import IdKeyed, KVView, RequestView, ScheduledItem, StepRecord
from .request import Request, RequestState
from .request_views import RequestViews
from .sampling import greedy_batch, sample
from .scheduler import Scheduler


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _default_num_blocks(config: EngineConfig, device: torch.device, bytes_per_token: int) -> int:
    spec = PRESETS[config.model]
    per_seq = -(-spec.max_context // config.block_size)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(per_seq, min(int(free * 0.4) // (bytes_per_token * config.block_size), 1 << 16))
    return per_seq * 8  # room for eight full-context sequences on the CPU


class Engine:
    def __init__(self, config: EngineConfig | None = None, plugins: list | None = None):
        self.config = config = config or EngineConfig()
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.attention_name = resolve_backend(config.attention, self.device)
        self.attention = get_backend(self.attention_name)
        self.spec = PRESETS[config.model]
        self.decode_attention = choose_decode_attention(config.decode_attention, self.device, self.dtype,
                                                        self.spec.head_dim)
        self.model = build_model(config.model, config.seed, self.device, self.dtype)
        s = self.spec
        if config.kv_layout == "paged":
            bytes_per_token = kv_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype)
            self.num_blocks = config.num_blocks or _default_num_blocks(config, self.device, bytes_per_token)
            self.kv = PagedKVCache(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device,
                                   self.num_blocks, config.block_size, s.max_context,
                                   spare_block=self._graphs_configured())
        else:
            self.num_blocks = 0
            self.kv = DenseKVCache(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device)
        self.scheduler = Scheduler(config, self.kv)
        self.plugins = PluginHost(list(plugins or []), config, s.num_layers)
        self.model_cache = self.plugins.wrap_cache(self.kv)  # the cache as the model sees it
        self.layer_attention = self._layer_attention(self.plugins.attention_per_layer(self.attention))
        self.decode_graphs = self._decode_graphs()
        self.requests: dict[int, Request] = {}
        self.pending: list[Request] = []  # not arrived yet, sorted by arrival step
        self.step_index = 0
        # What tracing costs: seconds spent building StepRecords, and in whole steps; and where
        # step time goes: [seconds, steps, device seconds], decode-only steps apart from the rest.
        # Device seconds: the GPU's span of each forward pass (CUDA only; 0 elsewhere).
        self.record_s = self.step_s = 0.0
        self.time_by_kind = {"decode-only": [0.0, 0, 0.0], "with prefill": [0.0, 0, 0.0]}
        if config.overlap_steps and self.plugins.plugins:
            raise ValueError("overlap_steps=True cannot run plugins (they see every step as it ends); "
                             "drop the plugins or overlap_steps")
        self._in_flight: InFlightStep | None = None  # overlap: the launched step not yet read back
        # CUDA events time one step at a time: not with a step still in flight.
        self.device_timer = DeviceTimer() if self.device.type == "cuda" and not config.overlap_steps else None
        self.weight_bytes = self.model.weight_bytes()
        self._final_views: dict[int, RequestView] = {}
        self._preemptions: dict[int, int] = {}  # request id -> times preempted (replaced, never mutated)
        self._finished_total = 0
        self._next_id = 0
        self._generators: dict[int, torch.Generator] = {}

    def _layer_attention(self, per_layer: list) -> list:
        """Decodes read the paged pool directly when nothing stands between the model and the pool:
        a built-in fast backend, no attention plugin on the layer, no cache plugin (kv_int8's pool
        must dequantise). Everything else reads packed keys; outputs are the same either way."""
        direct = (self.model_cache is self.kv and isinstance(self.kv, PagedKVCache)
                  and isinstance(self.kv.k_pool, torch.Tensor) and self.attention_name in ("sdpa", "flex"))
        return [PoolAttention(fn, self.decode_attention) if direct and fn is self.attention else PackedAttention(fn)
                for fn in per_layer]

    def _graphs_configured(self) -> bool:
        mode = self.config.decode_graphs
        return ((mode == "on" or (mode == "auto" and self.device.type == "cuda"))
                and self.config.kv_layout == "paged" and self.attention_name in ("sdpa", "flex"))

    def _decode_graphs(self) -> DecodeGraphs | None:
        if not self._graphs_configured():
            return None
        if not all(isinstance(a, PoolAttention) for a in self.layer_attention):
            return None  # a plugin stands between the model and the pool: eager steps only
        return DecodeGraphs(self.model, self.kv, self.decode_attention, capture=self.device.type == "cuda")

    # -- requests -------------------------------------------------------------------------
    def add_request(self, prompt: list[int] | str, max_new_tokens: int = 16, arrival_step: int = 0,
                    priority: int = 0, request_id: int | None = None, temperature: float = 0.0,
                    top_k: int = 0, seed: int | None = None, deadline_step: int | None = None) -> int:
        """Queues a request; returns its id. Raises ValueError naming what is wrong."""
        tokens = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._validate_request(tokens, max_new_tokens, arrival_step, priority, request_id, temperature, top_k,
                               seed)
        # A request added mid-run arrives no earlier than now: TTFT counts from when it exists.
        arrival_step = max(arrival_step, self.step_index)
        rid = self._next_id if request_id is None else request_id
        self._next_id = max(self._next_id, rid) + 1
        req = Request(rid, tokens, max_new_tokens, arrival_step, priority, temperature, top_k, seed,
                      deadline_step)
        self.requests[rid] = req
        self.pending.append(req)
        self.pending.sort(key=lambda r: (r.arrival_step, r.id))
        if temperature > 0 and self.config.overlap_steps:
            raise ValueError(f"temperature={temperature!r}: overlap_steps=True samples greedily on the device; "
                             f"use temperature 0 or overlap_steps=False")
        if temperature > 0:
            gen_seed = seed if seed is not None else (self.config.seed * 1_000_003 + rid) % 2**63
            self._generators[rid] = torch.Generator().manual_seed(gen_seed)
        return rid

    def _validate_request(self, tokens, max_new_tokens, arrival_step, priority, request_id, temperature, top_k,
                          seed):
        s = self.spec
        if not tokens:
            raise ValueError("prompt is empty; give at least one token (or a non-empty string)")
        bad = [t for t in tokens if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < s.vocab_size]
        if bad:
            raise ValueError(f"prompt token {bad[0]!r} is out of range; token ids must be integers in "
                             f"0..{s.vocab_size - 1} for model {s.name!r}")
        for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("arrival_step", arrival_step, 0),
                                 ("top_k", top_k, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} is out of range; it must be an integer >= {low}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"priority={priority!r} must be an integer")
        if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                or not (temperature == 0 or 1e-3 <= temperature <= 1e3)):
            # Not nan, and not so close to 0 that logits / temperature overflows.
            raise ValueError(f"temperature={temperature!r} is out of range; use 0 (greedy) or a number "
                             f"in 0.001..1000")
        total = len(tokens) + max_new_tokens
        if total > s.max_context:
            raise ValueError(f"prompt ({len(tokens)} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
                             f"exceeds the context of model {s.name!r} ({s.max_context}); shorten the prompt "
                             f"or lower max_new_tokens")
        if isinstance(self.kv, PagedKVCache):
            need = self.kv.allocator.blocks_for(total)
            if need > self.num_blocks:
                raise ValueError(f"num_blocks={self.num_blocks} is too small: one request of {total} tokens "
                                 f"needs {need} blocks of {self.config.block_size}; raise num_blocks to at "
                                 f"least {need}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise ValueError(f"seed={seed!r} is out of range; it must be an integer in 0..2**63-1")
        if request_id is not None:
            if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id < 0:
                raise ValueError(f"request_id={request_id!r} must be an integer >= 0")
            if request_id in self.requests:
                raise ValueError(f"request_id={request_id} is already used; give each request its own id")

    def has_unfinished(self) -> bool:
        return bool(self.pending or self.scheduler.waiting or self.scheduler.running or self._in_flight)

    # -- one step -------------------------------------------------------------------------
    def step(self) -> StepRecord | None:
        """Runs one scheduler step and returns its record.

        With overlap_steps, launches the step and returns the previous one's record, complete,
        once its tokens are read back; None when there is none yet (the first call)."""
        start = time.perf_counter()
        step = self.step_index
        while self.pending and self.pending[0].arrival_step <= step:
            req = self.pending.pop(0)
            req.arrival_time = start
            self.scheduler.add_arrived(req)

        state = self.scheduler.state(step)
        self.plugins.before_step(state)
        plan = self.scheduler.schedule(state)
        if self._in_flight is not None and not plan.items:
            # Nothing to launch behind the step in flight: hand its record over first; this step
            # is scheduled again on the next call.
            return self._resolve_in_flight()
        # One pass: each item's record entry, the tokens it feeds, whether it samples afterwards.
        items, tokens, samples = [], [], []
        for s in plan.items:
            r, n = s.request, s.num_tokens
            first = r.num_computed
            if s.kind == "decode":  # feeds its last generated token, then samples (the hot case)
                items.append(ScheduledItem(r.id, "decode", first, 1, first + 1))
                tokens.append(r.output[-1:])
                samples.append(True)
                continue
            items.append(ScheduledItem(r.id, s.kind, first, n, first + n))
            tokens.append(r.token_slice(first, n))
            samples.append(first + n == len(r.prompt) + len(r.output))

        sampled: dict[int, int] = {}
        in_flight = None
        if plan.items and self.config.overlap_steps:
            # Tokens stay on the device; requests advance on placeholders (overlap.py).
            logits = self._forward(items, tokens, samples, self._in_flight)
            on_device, on_host, copied = sample_in_flight(logits)
            finished, sampling, positions, first_token, finishing = self._advance(
                step, plan, samples, [PENDING_TOKEN] * on_device.shape[0], now=None)
            in_flight = InFlightStep(None, sampling, positions, on_device, on_host, copied, first_token, finishing)
        else:
            if plan.items:
                sampled = self._sample(plan, samples, self._forward(items, tokens, samples, None))
            # No explicit device sync: reading the sampled tokens back is the step's one host sync,
            # and by then every kernel of the step (queued before it on the stream) has run.
            finished = self._advance(step, plan, samples, list(sampled.values()), now=time.perf_counter())[0]

        record_start = time.perf_counter()
        wall = record_start - start
        record = self._record(step, plan, items, sampled, finished, wall)
        self.record_s += time.perf_counter() - record_start
        self.plugins.after_step(state, record)
        record.annotations = state.annotations + self.plugins.descriptions()
        record.errors = self.plugins.take_errors()
        if self.decode_graphs is not None and self.decode_graphs.last and plan.items:
            record.decode_graph = list(self.decode_graphs.last)
        if self._stalled(record):
            # Nothing ran although requests are waiting and none is still to arrive: say so, so a
            # stuck schedule (e.g. a plugin reserving the whole budget) shows instead of idling.
            record.errors.append(f"no progress: {record.waiting + record.running} requests could not be "
                                 f"scheduled at step {step}")
        self.step_index += 1
        if in_flight is not None:
            in_flight.record = record
            record = self._resolve_in_flight()  # the previous step's, while this one runs
            self._in_flight = in_flight
        took = time.perf_counter() - start
        self.step_s += took
        if plan.items:
            kind = self.time_by_kind["with prefill" if plan.tokens("prefill") else "decode-only"]
            kind[0] += took
            kind[1] += 1
            if self.device_timer is not None:
                kind[2] += self.device_timer.take_seconds()
        return record

    def _resolve_in_flight(self) -> StepRecord | None:
        in_flight, self._in_flight = self._in_flight, None
        return in_flight.resolve() if in_flight is not None else None

    def _forward(self, items: list[ScheduledItem], tokens: list[list[int]], samples: list[bool],
                 previous: InFlightStep | None) -> torch.Tensor:
        """The step's forward pass; returns the logits of the rows that sample. `previous`: the step
        still in flight, whose sampled tokens some decodes feed (overlap)."""
        batch = build_batch(items, tokens, samples, self.device)
        rids = [item.request_id for item in items]
        if previous is not None:  # only a step in flight leaves placeholders to feed
            feed_pending_tokens(batch.token_ids, tokens, rids, previous)
        self.kv.begin_step(rids, batch)
        timer = self.device_timer
        if timer is not None:
            timer.start()
        logits = self.decode_graphs.run(batch, samples) if self.decode_graphs else None
        if logits is None:  # not a decode-only step (or no graphs): eager forward
            logits = self.model(batch.token_ids, batch.positions, batch.sample_rows, self.model_cache,
                                self.layer_attention, batch)
        if timer is not None:
            timer.stop()
        self.kv.commit_step()
        return logits

    def _sample(self, plan, samples: list[bool], logits: torch.Tensor) -> dict[int, int]:
        sampling = [s.request for s, flag in zip(plan.items, samples) if flag]
        if not self._generators or all(r.temperature <= 0 for r in sampling):  # generators: temperature > 0
            chosen = greedy_batch(logits)
        else:
            chosen = [sample(logits[i], r.temperature, r.top_k, self._generators.get(r.id))
                      for i, r in enumerate(sampling)]
        return {r.id: tok for r, tok in zip(sampling, chosen)}

    def _advance(self, step: int, plan, samples: list[bool], chosen: list[int], now: float | None):
        """Moves the step's requests on: tokens computed, `chosen` appended to the outputs of those
        that sample (placeholders when overlapped: `now` is None and the times come with the
        tokens), finished requests freed. Returns (finished ids, the requests that sampled, where
        their tokens went, those that sampled their first token, those that finished)."""
        finished, sampling, positions, first_token, finishing = [], [], [], [], []
        eos = self.config.eos_token_id
        tokens = iter(chosen)
        for s, flag in zip(plan.items, samples):
            r = s.request
            r.num_computed += s.num_tokens
            r.last_scheduled_step = step
            if flag:
                sampling.append(r)
                positions.append(len(r.output))
                r.output.append(next(tokens))
                if r.first_token_step is None:
                    r.first_token_step, r.first_token_time = step, now
                    first_token.append(r)
                if len(r.output) >= r.max_new_tokens or (eos is not None and r.output[-1] == eos):
                    r.state, r.finished_step, r.finish_time = RequestState.FINISHED, step, now
                    self.scheduler.finish(r)
                    finished.append(r.id)
                    finishing.append(r)
                    self._finished_total += 1
                    self.plugins.on_request_completion(r)
                    continue
            if s.kind != "decode":  # a decode that did not finish stays a decode
                r.state = r.phase()
        return finished, sampling, positions, first_token, finishing

    # -- the record -----------------------------------------------------------------------
    def _record(self, step, plan, items, sampled, finished, wall) -> StepRecord:
        sched = self.scheduler
        if plan.preempted:  # a new snapshot: earlier records keep theirs
            self._preemptions = {**self._preemptions, **{r.id: r.num_preemptions for r in plan.preempted}}
        views = RequestViews(list(self.requests.values()), {i.request_id for i in items}, plan.reasons,
                             self._final_views, self._preemptions)
        decode_tokens, prefill_tokens = plan.tokens("decode"), plan.tokens("prefill")
        freed = [r.id for r in plan.preempted] + finished
        return StepRecord(
            step=step, policy=self.config.policy, budget=plan.budget, decode_tokens=decode_tokens,
            prefill_tokens=prefill_tokens, unused_tokens=plan.budget - decode_tokens - prefill_tokens,
            decode_demand=plan.decode_demand, decode_cap=self.config.max_decode_per_step, items=items,
            requests=views, kv=self._kv_view(freed), preempted=[r.id for r in plan.preempted],
            finished=finished, sampled=IdKeyed(sampled),
            running=len(sched.running), waiting=len(sched.waiting),
            finished_total=self._finished_total, pending=len(self.pending),
            padding_slots=sched.padding_slots(), wall_time_s=wall,
            memory=memory_view(self.device, self.weight_bytes, self.kv.pool_bytes),
        )

    def _kv_view(self, freed: list[int]) -> KVView:
        kv = self.kv
        tokens = IdKeyed(kv.tokens)
        if isinstance(kv, PagedKVCache):
            a = kv.allocator
            tables = IdKeyed(a.tables)  # immutable tuples: no copies
            used = a.num_blocks - a.num_free
            freed_blocks = IdKeyed(self.scheduler.freed_blocks)
            return KVView("paged", a.block_size, a.num_blocks, used, a.num_free, tables, tokens, freed,
                          kv.bytes_per_token, kv.pool_bytes, freed_blocks)
        return KVView("dense", self.config.block_size, 0, 0, 0, {}, tokens, freed, kv.bytes_per_token,
                      kv.pool_bytes)

    # -- whole runs -----------------------------------------------------------------------
    def run_until_done(self, max_steps: int | None = None) -> dict[int, list[int]]:
        """Steps until every request finished; returns {request id: generated token ids}."""
        idle = 0
        while self.has_unfinished():
            if max_steps is not None and self.step_index >= max_steps:
                break
            record = self.step()
            idle = idle + 1 if record is not None and self._stalled(record) else 0
            if idle > 1:  # nothing can ever run again: fail loudly instead of hanging
                raise RuntimeError(f"scheduler made no progress at step {record.step}: "
                                   f"{len(self.scheduler.waiting)} requests cannot be scheduled")
        self._resolve_in_flight()  # stopped at max_steps with a step in flight: its tokens, not placeholders
        return self.outputs()

    def outputs(self) -> dict[int, list[int]]:
        return {rid: list(r.output) for rid, r in self.requests.items()}

    def _stalled(self, record: StepRecord) -> bool:
        """Nothing ran although requests wait and none is still to arrive."""
        return not record.items and not self.pending and bool(self.scheduler.waiting or self.scheduler.running)
