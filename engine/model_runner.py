"""ModelRunner: the model, its KV cache, the attention adapters, decode graphs and sampling.

The engine decides what runs (the scheduler's plan); the runner runs it: it packs the step's
items into one ragged batch, runs the forward pass, and samples the rows that end a sequence.
Everything device-specific (dtype, CUDA graphs, the Triton decode kernel, timing on the GPU,
overlapped sampling) lives here, so `Engine` reads as the textbook loop.
"""

from __future__ import annotations

import os

import torch

from .attention import get_backend, resolve_backend
from .attention.decode_kernel import choose_decode_attention
from .attention.layer_attention import PackedAttention, PoolAttention
from .batch_builder import build_batch
from .checkpoint import is_preset, load_checkpoint, model_spec
from .config import EngineConfig
from .decode_graphs import DecodeGraphs
from .device_timer import DeviceTimer
from .kv.cache import DenseKVCache, PagedKVCache, kv_bytes_per_token
from .model import build_model
from .overlap import DeviceTokens, feed_pending_tokens
from .plugins.host import PluginHost
from .records import ScheduledItem
from .request import Request
from .sampling import greedy_batch, sample
from .speculation.acceptance import Proposal, verify
from .speculation.rows import as_decode_rows


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = getattr(torch, name)
    assert isinstance(dtype, torch.dtype)
    return dtype


CPU_POOL_BYTES = 1 << 30  # a default CPU pool stops here, or at one full-context sequence if that is more


def default_num_blocks(config: EngineConfig, device: torch.device, bytes_per_token: int) -> int:
    spec = model_spec(config.model)
    per_seq = -(-spec.max_context // config.block_size)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(per_seq, min(int(free * 0.4) // (bytes_per_token * config.block_size), 1 << 16))
    # Room for eight full-context sequences on the CPU (the presets: 16 MiB for tiny, 768 MiB for small);
    # a checkpoint's long context (32k for Qwen2.5) would take gigabytes, so the pool stops at 1 GiB.
    return min(per_seq * 8, max(per_seq, CPU_POOL_BYTES // (bytes_per_token * config.block_size)))


def blocks_in_budget(config: EngineConfig, bytes_per_token: int) -> int:
    """Float blocks that fit in kv_memory_bytes (a compressed pool re-sizes itself on attach)."""
    assert config.kv_memory_bytes is not None
    blocks = config.kv_memory_bytes // (config.block_size * bytes_per_token)
    if blocks < 1:
        raise ValueError(f"kv_memory_bytes={config.kv_memory_bytes} holds no KV block: one block of "
                         f"{config.block_size} tokens takes {config.block_size * bytes_per_token} bytes; "
                         f"raise kv_memory_bytes")
    return blocks


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can take: free GPU memory on CUDA, available RAM on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_pool_fits(num_blocks: int, block_size: int, bytes_per_token: int, device: torch.device) -> None:
    """Refuses a KV pool larger than the memory free for it, before anything is allocated (a pool of
    10**9 blocks was killed by the kernel, after building its free list)."""
    need, free = num_blocks * block_size * bytes_per_token, free_memory_bytes(device)
    usable = int(free * 0.9)  # the model, activations and the records need room too
    if need > usable:
        fit = usable // (block_size * bytes_per_token)
        where = "free on the GPU" if device.type == "cuda" else "available in RAM"
        raise ValueError(f"num_blocks={num_blocks}: the KV pool would take {need / 2**30:.1f} GiB but only "
                         f"{free / 2**30:.1f} GiB is {where}; use num_blocks <= {fit} (blocks of {block_size} "
                         f"tokens)")


class ModelRunner:
    def __init__(self, config: EngineConfig, plugins: PluginHost):
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.attention_name = resolve_backend(config.attention, self.device)
        self.attention = get_backend(self.attention_name)
        self.spec = s = model_spec(config.model)
        self.decode_attention = choose_decode_attention(config.decode_attention, self.device, self.dtype, s.head_dim)
        self.model = self._build_model()
        self.weight_bytes = self.model.weight_bytes()
        self.kv: PagedKVCache | DenseKVCache
        if config.kv_layout == "paged":
            bytes_per_token = kv_bytes_per_token(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype)
            self.num_blocks = config.num_blocks or default_num_blocks(config, self.device, bytes_per_token)
            if config.kv_memory_bytes is not None:
                self.num_blocks = blocks_in_budget(config, bytes_per_token)
            check_pool_fits(self.num_blocks, config.block_size, bytes_per_token, self.device)
            self.kv = self._paged_cache(self.num_blocks)
        else:
            self.num_blocks = 0
            self.kv = DenseKVCache(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device)
        if isinstance(self.kv, PagedKVCache):  # the reference backend reads history as the seed says: flattened
            self.kv.read_by_flatten = self.attention_name == "reference"
        self.model_cache = plugins.wrap_cache(self.kv)  # the cache as the model sees it
        if isinstance(self.kv, PagedKVCache):  # a compressing plugin may have fitted more blocks in the budget
            self.num_blocks = self.kv.allocator.num_blocks
        self.layer_attention = self._layer_attention(plugins.attention_per_layer(self.attention))
        self.decode_graphs = self._decode_graphs()
        # CUDA events time one step at a time: not with a step still in flight.
        self.device_timer = DeviceTimer() if self.device.type == "cuda" and not config.overlap_steps else None
        self.generators: dict[int, torch.Generator] = {}  # request id -> its sampler (temperature > 0)
        self._previous: DeviceTokens | None = None  # overlap: the last step's tokens, still on the device

    # Override points for one shard's runner (engine/distributed): its share of the model, its pool.
    def _build_model(self):
        c = self.config
        return (build_model(c.model, c.seed, self.device, self.dtype) if is_preset(c.model)
                else load_checkpoint(c.model, self.device, self.dtype))

    def _paged_cache(self, num_blocks: int) -> PagedKVCache:
        s = self.spec
        return PagedKVCache(s.num_layers, s.num_kv_heads, s.head_dim, self.dtype, self.device, num_blocks,
                            self.config.block_size, s.max_context, spare_block=self._graphs_configured(),
                            prefix_caching=self.config.caches_prefixes, memory_budget=self.config.kv_memory_bytes,
                            contiguous_up_to=self.config.contiguous_up_to)

    def close(self) -> None:
        """Nothing to stop on one device (a sharded runner stops its worker processes)."""

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

    def decode_path(self) -> list[str]:
        """The fast-path pieces that run, for the run header."""
        path = ["triton decode"] if self.decode_attention.reads_tables else []
        return path + (["decode graphs"] if self.decode_graphs is not None else [])

    def add_sampler(self, request: Request) -> None:
        if request.temperature > 0:
            seed = request.seed if request.seed is not None else (self.config.seed * 1_000_003 + request.id) % 2**63
            self.generators[request.id] = torch.Generator().manual_seed(seed)

    # -- one step -------------------------------------------------------------------------
    def run_speculative(self, items: list[ScheduledItem], tokens: list[list[int]], samples: list[bool],
                        sampling: list[Request], proposals: list[Proposal | None],
                        stop_ids: frozenset[int] = frozenset()) -> tuple[list[int], list[list[int]]]:
        """A step with speculating decodes (proposals[i] not None for sampling[i]): each request's
        next token and the drafts it keeps (speculation/acceptance.py), cut at a stop id."""
        if isinstance(self.kv, PagedKVCache):  # as one-token decodes: the decode attention and graphs run them
            items, tokens, samples = as_decode_rows(items, tokens, samples)
        logits = self._forward(items, tokens, samples)
        return verify(logits, sampling, proposals, self.generators, stop_ids)

    def run(self, items: list[ScheduledItem], tokens: list[list[int]], samples: list[bool],
            sampling: list[Request]) -> list[int] | DeviceTokens:
        """Runs the step's packed batch and samples a token for each request in `sampling` (the
        items flagged in `samples`, in order). Overlapped: the tokens stay on the device
        (DeviceTokens), on their way to the host, and the next step's decodes read them there."""
        logits = self._forward(items, tokens, samples)
        if self.config.overlap_steps:
            self._previous = DeviceTokens.sample(logits, [r.id for r in sampling])
            return self._previous
        # No explicit device sync: reading the sampled tokens back is the step's one host sync,
        # and by then every kernel of the step (queued before it on the stream) has run.
        if not self.generators or all(r.temperature <= 0 for r in sampling):
            return greedy_batch(logits)
        return [sample(logits[i], r.temperature, r.top_k, self.generators.get(r.id)) for i, r in enumerate(sampling)]

    def _forward(self, items: list[ScheduledItem], tokens: list[list[int]], samples: list[bool]) -> torch.Tensor:
        batch = build_batch(items, tokens, samples, self.device)
        rids = [item.request_id for item in items]
        if self._previous is not None:  # only overlapped steps leave placeholders to feed
            feed_pending_tokens(batch.token_ids, tokens, rids, self._previous)
        self.kv.begin_step(rids, batch)
        if self.device_timer is not None:
            self.device_timer.start()
        logits = self.decode_graphs.run(batch, samples) if self.decode_graphs else None
        if logits is None:  # not a decode-only step (or no graphs): eager forward
            logits = self.model(batch.token_ids, batch.positions, batch.sample_rows, self.model_cache,
                                self.layer_attention, batch)
        if self.device_timer is not None:
            self.device_timer.stop()
        self.kv.commit_step()
        return logits

    def take_device_seconds(self) -> float | None:
        """The GPU's span of the forward passes since the last call (None when not timed)."""
        return self.device_timer.take_seconds() if self.device_timer is not None else None

    def last_graph_bucket(self) -> list[int] | None:
        graphs = self.decode_graphs
        return list(graphs.last) if graphs is not None and graphs.last else None

    def free(self, request_id: int) -> None:
        self.generators.pop(request_id, None)
