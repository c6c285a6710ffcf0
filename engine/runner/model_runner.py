"""ModelRunner: the model, its KV store, the attention adapters, decode graphs and sampling.

The scheduler decides what runs (its plan); the runner runs it: it takes the plan's KV changes
into its store, packs the step's items into one ragged batch, runs the forward pass, verifies
drafts, samples the rows that end a sequence, and says what happened in one StepOutput.
Everything device-specific (dtype, CUDA graphs, the Triton decode kernel, timing on the GPU,
overlapped sampling) lives here, so `Engine` reads as the textbook loop.
"""

from __future__ import annotations

import torch

from ..attention import get_backend, resolve_backend
from ..attention.decode_kernel import choose_decode_attention
from ..attention.layer_attention import PackedAttention, PoolAttention
from ..batch_builder import build_batch
from ..config import EngineConfig
from ..kv.dense_store import DenseKVStore
from ..kv.paged_store import PagedKVStore, kv_bytes_per_token
from ..models.llama import PRESETS
from ..models.source import eos_token_ids, load_model, model_spec
from ..plugins.host import PluginHost
from ..profiling.memory import available_ram_bytes
from ..records import ScheduledItem
from ..requests.request import Request
from ..sampling import greedy_batch, sample_batch
from ..scheduler.plan import SchedulePlan
from ..speculation.acceptance import verify
from ..speculation.rows import as_decode_rows
from ..speculation.speculator import make_speculator
from .cpu_dtype import default_cpu_dtype
from .cpu_memory import keep_freed_memory
from .decode_graphs import DecodeGraphs
from .device_timer import DeviceTimer
from .output import StepOutput
from .overlap import PENDING_TOKEN, DeviceTokens, feed_pending_tokens
from .packed_linear import pack_linear_weights


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device, model: str | None = None) -> torch.dtype:
    """auto: bfloat16 on CUDA; on the CPU, bfloat16 for a real model where the CPU has bf16
    instructions (cpu_dtype.py), float32 otherwise (presets: the exactness tests' models)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if model is not None and default_cpu_dtype(model) == "bfloat16" else torch.float32
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype)
    return dtype


def stop_ids(config: EngineConfig, vocab_size: int) -> frozenset[int]:
    """The ids that end a request: eos_token_id if set, else the checkpoint's; none with ignore_eos.
    Also refuses, in one line, model settings the vocabulary rules out."""
    name = model_spec(config.llm.name).name
    if config.llm.eos_token_id is not None and config.llm.eos_token_id >= vocab_size:
        raise ValueError(f"eos_token_id={config.llm.eos_token_id} is outside the vocabulary of model {name!r} "
                         f"(0..{vocab_size - 1})")
    speculation = config.speculation
    draft = PRESETS[speculation.draft_model] if speculation is not None and speculation.method == "draft" else None
    if draft is not None and draft.vocab_size != vocab_size:
        raise ValueError(f"draft_model={draft.name!r} has a vocabulary of {draft.vocab_size} tokens, model "
                         f"{name!r} one of {vocab_size}; a draft must share the target's vocabulary "
                         f"(for 'tiny': 'micro' or 'tiny')")
    if config.llm.ignore_eos:
        return frozenset()
    if config.llm.eos_token_id is not None:
        return frozenset([config.llm.eos_token_id])
    ids = frozenset(i for i in eos_token_ids(config.llm.name) if i < vocab_size)
    if ids and config.runner.overlap_steps:
        raise ValueError(f"overlap_steps=True needs requests that end at max_new_tokens, but model "
                         f"{config.llm.name!r} ends sequences at token {min(ids)}; set ignore_eos=True")
    return ids


CPU_POOL_BYTES = 1 << 30  # a default CPU pool stops here, or at one full-context sequence if that is more
CPU_SEQUENCE_BYTES = 4 << 30  # ... and that is not more than this


def default_num_blocks(config: EngineConfig, device: torch.device, bytes_per_token: int) -> int:
    spec = model_spec(config.llm.name)
    per_seq = -(-spec.max_context // config.cache.block_size)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(per_seq, min(int(free * 0.4) // (bytes_per_token * config.cache.block_size), 1 << 16))
    # Room for eight full-context sequences on the CPU (the presets: 16 MiB for tiny, 768 MiB for small);
    # a checkpoint's long context (32k for Qwen2.5) would take gigabytes, so the pool stops at 1 GiB, or at
    # one full-context sequence up to CPU_SEQUENCE_BYTES. A context of 20M tokens is not given its 10 GB
    # by default: longer requests are refused in one line that says to raise num_blocks.
    in_budget = CPU_POOL_BYTES // (bytes_per_token * config.cache.block_size)
    if per_seq * bytes_per_token * config.cache.block_size > CPU_SEQUENCE_BYTES:
        return min(per_seq, in_budget)
    return min(per_seq * 8, max(per_seq, in_budget))


def dense_tokens(config: EngineConfig, device: torch.device, bytes_per_token: int) -> int:
    """The dense layout's cap on the KV tokens all requests hold at once: cache.dense_max_tokens, or
    as many tokens as the default paged pool holds (eight full-context sequences on the CPU, up to 1
    GiB; 40% of free GPU memory on CUDA). A cap larger than the memory free is refused, as a pool is."""
    cap = config.cache.dense_max_tokens
    if cap is None:
        return default_num_blocks(config, device, bytes_per_token) * config.cache.block_size
    need = cap * bytes_per_token
    short = memory_shortfall(need, device)
    if short is not None:
        free, usable, where = short
        raise ValueError(f"dense_max_tokens={cap}: the dense KV cache could take {need / 2**30:.1f} GiB but only "
                         f"{free / 2**30:.1f} GiB is {where}; use dense_max_tokens <= {usable // bytes_per_token}")
    return cap


def blocks_in_budget(config: EngineConfig, bytes_per_token: int) -> int:
    """Float blocks that fit in kv_memory_bytes (a compressed pool re-sizes itself on attach)."""
    assert config.cache.kv_memory_bytes is not None
    blocks = config.cache.kv_memory_bytes // (config.cache.block_size * bytes_per_token)
    if blocks < 1:
        raise ValueError(f"kv_memory_bytes={config.cache.kv_memory_bytes} holds no KV block: one block of "
                         f"{config.cache.block_size} tokens takes {config.cache.block_size * bytes_per_token} bytes; "
                         f"raise kv_memory_bytes")
    return blocks


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can take: free GPU memory on CUDA, available RAM on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = available_ram_bytes()
    return available if available is not None else 1 << 62  # unreadable: the allocation itself will say


def memory_shortfall(need: int, device: torch.device) -> tuple[int, int, str] | None:
    """None when `need` bytes fit in the memory free for KV on `device`; else (bytes free, bytes usable
    for KV, where they are free), for the refusal."""
    free = free_memory_bytes(device)
    usable = int(free * 0.9)  # the model, activations and the records need room too
    if need <= usable:
        return None
    return free, usable, "free on the GPU" if device.type == "cuda" else "available in RAM"


def check_pool_fits(num_blocks: int, block_size: int, bytes_per_token: int, device: torch.device) -> None:
    """Refuses a KV pool larger than the memory free for it, before anything is allocated (a pool of
    10**9 blocks was killed by the kernel, after building its free list)."""
    need = num_blocks * block_size * bytes_per_token
    short = memory_shortfall(need, device)
    if short is not None:
        free, usable, where = short
        fit = usable // (block_size * bytes_per_token)
        raise ValueError(f"num_blocks={num_blocks}: the KV pool would take {need / 2**30:.1f} GiB but only "
                         f"{free / 2**30:.1f} GiB is {where}; use num_blocks <= {fit} (blocks of {block_size} "
                         f"tokens)")


class ModelRunner:
    def __init__(self, config: EngineConfig, plugins: PluginHost):
        self.config = config
        self.device = resolve_device(config.llm.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # a step's large tensors reuse freed memory (cpu_memory.py)
        self.dtype = resolve_dtype(config.llm.dtype, self.device, config.llm.name)
        self.attention_name = resolve_backend(config.runner.attention, self.device)
        self.attention = get_backend(self.attention_name)
        self.spec = s = model_spec(config.llm.name)
        self.stop_ids = stop_ids(config, s.vocab_size)
        self.decode_attention = choose_decode_attention(config.runner.decode_attention, self.device, self.dtype,
                                                        s.head_dim)
        self.model = self._build_model()
        pack_linear_weights(self.model)  # bf16 on the CPU: each weight in oneDNN's layout, once
        self.weight_bytes = self.model.weight_bytes()
        self.kv: PagedKVStore | DenseKVStore
        self.dense_tokens: int | None = None  # the dense layout's cap on held KV tokens (None: paged)
        if config.cache.kv_layout == "paged":
            bytes_per_token = kv_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype)
            num_blocks = config.cache.num_blocks or default_num_blocks(config, self.device, bytes_per_token)
            if config.cache.kv_memory_bytes is not None:
                num_blocks = blocks_in_budget(config, bytes_per_token)
            check_pool_fits(num_blocks, config.cache.block_size, bytes_per_token, self.device)
            self.kv = self._paged_store(num_blocks)
            self.kv.read_by_flatten = self.attention_name == "reference"  # the teaching path, as the seed says
        else:
            self.kv = DenseKVStore(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device)
            self.dense_tokens = dense_tokens(config, self.device, self.kv.bytes_per_token)
        self.model_cache = plugins.wrap_cache(self.kv)  # the store as the model sees it
        # The pool's size, decided here once: a compressing plugin may have fitted more blocks in the budget.
        self.num_blocks = self.kv.num_blocks if isinstance(self.kv, PagedKVStore) else 0
        self.layer_attention = self._layer_attention(plugins.attention_per_layer(self.attention))
        self.decode_graphs = self._decode_graphs()
        # CUDA events time one step at a time: not with a step still in flight.
        self.device_timer = DeviceTimer() if self.device.type == "cuda" and not config.runner.overlap_steps else None
        self.speculator = make_speculator(config, self.device, self.dtype, self.attention)
        self.generators: dict[int, torch.Generator] = {}  # request id -> its sampler (temperature > 0)
        self._previous: DeviceTokens | None = None  # overlap: the last step's tokens, still on the device

    # Override points for one shard's runner (engine/distributed): its share of the model, its pool.
    def _build_model(self):
        c = self.config
        return load_model(c.llm.name, c.llm.seed, self.device, self.dtype)  # a preset's, or the real model's

    def _paged_store(self, num_blocks: int) -> PagedKVStore:
        s = self.spec
        return PagedKVStore(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device, num_blocks,
                            self.config.cache.block_size, s.max_context, spare_block=self._graphs_configured(),
                            memory_budget=self.config.cache.kv_memory_bytes)

    def close(self) -> None:
        """Nothing to stop on one device (a sharded runner stops its worker processes)."""

    def _layer_attention(self, per_layer: list) -> list:
        """Decodes read the paged pool directly when nothing stands between the model and the pool:
        a built-in fast backend, no attention plugin on the layer, no cache plugin (kv_int8's pool
        must dequantise). Everything else reads packed keys; outputs are the same either way."""
        direct = (self.model_cache is self.kv and isinstance(self.kv, PagedKVStore)
                  and isinstance(self.kv.k_pool, torch.Tensor) and self.attention_name in ("sdpa", "flex"))
        return [PoolAttention(fn, self.decode_attention) if direct and fn is self.attention else PackedAttention(fn)
                for fn in per_layer]

    def _graphs_configured(self) -> bool:
        mode = self.config.runner.decode_graphs
        return ((mode == "on" or (mode == "auto" and self.device.type == "cuda"))
                and self.config.cache.kv_layout == "paged" and self.attention_name in ("sdpa", "flex"))

    def _decode_graphs(self) -> DecodeGraphs | None:
        if not self._graphs_configured():
            return None
        if not all(isinstance(a, PoolAttention) for a in self.layer_attention):
            return None  # a plugin stands between the model and the pool: eager steps only
        return DecodeGraphs(self.model, self.kv, self.decode_attention, capture=self.device.type == "cuda")

    def decode_path(self) -> list[str]:
        """The fast-path pieces that run, for the run header."""
        reads_pool = any(isinstance(a, PoolAttention) for a in self.layer_attention)
        path = [f"{self.decode_attention.name} decode"] if reads_pool and self.decode_attention.reads_tables else []
        return path + (["decode graphs"] if self.decode_graphs is not None else [])

    def add_sampler(self, request: Request) -> None:
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else (self.config.llm.seed * 1_000_003 + request.id) % 2**63
            self.generators[request.id] = torch.Generator().manual_seed(seed)

    # -- one step -------------------------------------------------------------------------
    def run(self, plan: SchedulePlan) -> StepOutput:
        """Runs the plan: its KV changes into the store, then the packed batch, then a token for
        each request in `plan.sampling` (and the drafts that stood, if any were proposed)."""
        self.kv.apply(plan.released, plan.tables)
        self._forget(plan)
        if not plan.items:
            return StepOutput()
        out = self._run_speculative(plan) if plan.drafts else self._run_plain(plan)
        out.device_time_s = self.device_timer.take_seconds() if self.device_timer is not None else None
        graphs = self.decode_graphs
        out.graph_bucket = list(graphs.last) if graphs is not None and graphs.last else None
        return out

    def _forget(self, plan: SchedulePlan) -> None:
        """Per-request state of requests that finished (their samplers, their drafts' state), and
        the draft model's cache of requests preempted (they recompute from the start)."""
        speculator = self.speculator
        for rid in plan.finished:
            self.generators.pop(rid, None)
            if speculator is not None:
                speculator.free(rid)
        if speculator is not None:
            for r in plan.preempted:
                speculator.keep(r.id, 0)

    def _run_plain(self, plan: SchedulePlan) -> StepOutput:
        """Overlapped: the tokens stay on the device (DeviceTokens), on their way to the host, and
        the next step's decodes read them there; `sampled` holds placeholders until then."""
        logits = self._forward(plan.batch, plan.tokens, plan.samples)
        sampling = plan.sampling
        if self.config.runner.overlap_steps:
            self._previous = DeviceTokens.sample(logits, [r.id for r in sampling])
            return StepOutput([PENDING_TOKEN] * len(sampling), on_device=self._previous)
        # No explicit device sync: reading the sampled tokens back is the step's one host sync,
        # and by then every kernel of the step (queued before it on the stream) has run.
        if not self.generators or all(r.temperature <= 0 for r in sampling):
            return StepOutput(greedy_batch(logits))
        return StepOutput(sample_batch(logits, sampling, self.generators))

    def _run_speculative(self, plan: SchedulePlan) -> StepOutput:
        """A step with speculating decodes: their drafts proposed and fed after their last token,
        verified against the target's logits (speculation/acceptance.py), cut at a stop id."""
        assert self.speculator is not None
        proposals = self.speculator.propose(plan.drafts)
        tokens = [fed + proposals[s.request][0] if item.drafts else fed
                  for item, s, fed in zip(plan.batch, plan.items, plan.tokens, strict=True)]
        items, samples = plan.batch, plan.samples
        if isinstance(self.kv, PagedKVStore):  # as one-token decodes: the decode attention and graphs run them
            items, tokens, samples = as_decode_rows(items, tokens, samples)
        logits = self._forward(items, tokens, samples)
        sampling = plan.sampling
        chosen, accepted = verify(logits, sampling, [proposals.get(r) for r in sampling], self.generators,
                                  self.stop_ids)
        kept = {r: good for r, good in zip(sampling, accepted, strict=True) if r in proposals}
        for r, good in kept.items():  # what stood: the request's token and its good drafts
            self.speculator.keep(r.id, r.num_computed + 1 + len(good))  # the draft model's cache
            if isinstance(self.kv, DenseKVStore):  # paged: the scheduler gives back the emptied blocks
                self.kv.rollback(r.id, r.num_computed + 1 + len(good))
        return StepOutput(chosen, kept)

    def _forward(self, items: list[ScheduledItem], tokens: list[list[int]], samples: list[bool]) -> torch.Tensor:
        batch = build_batch(items, tokens, samples, self.device)
        if self.model.reserve_positions(max(batch.k_lens)) and self.decode_graphs is not None:
            self.decode_graphs.graphs.clear()  # they read the rope table that was just replaced
        rids = [item.request_id for item in items]
        if self._previous is not None:  # only overlapped steps leave placeholders to feed
            feed_pending_tokens(batch.token_ids, tokens, rids, self._previous)
        self.kv.begin_step(rids, batch)
        if self.device_timer is not None:
            self.device_timer.start()
        logits = self.decode_graphs.run(batch, samples) if self.decode_graphs else None
        if logits is None:  # not a decode-only step (or no graphs): eager forward
            # inference_mode, not just no_grad: no version counters or view tracking on each of the
            # step's ~1,000 ops (a decode step of 64 smollm2 requests on the CPU ran ~10% quicker)
            with torch.inference_mode():
                logits = self.model(batch.token_ids, batch.positions, batch.sample_rows, self.model_cache,
                                    self.layer_attention, batch)
        if self.device_timer is not None:
            self.device_timer.stop()
        return logits
