"""EngineConfig: every knob of the engine, validated when it is built."""

from __future__ import annotations

from dataclasses import dataclass, fields

MODELS = ("tiny", "small")  # the random presets; `model` may also be a checkpoint directory (checkpoint.py)
DRAFT_MODELS = ("micro", "tiny", "small")  # presets a draft may be; it must share the target's vocabulary
DEVICES = ("auto", "cpu", "cuda")
KV_LAYOUTS = ("paged", "dense")
ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "flex")
POLICIES = ("fcfs", "static")
DECODE_GRAPHS = ("auto", "on", "off")
DECODE_ATTENTION = ("auto", "triton", "gather")
DTYPES = ("auto", "float32", "float64", "bfloat16")
SPECULATIVE = ("off", "ngram", "draft")  # "off" is None, for files and command lines that cannot write None
MAX_SPECULATIVE_TOKENS = 16
SHARD_BY = ("heads", "sequence")
MAX_SEED = 2**32 - 1


def _check_choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _check_int(name: str, value, low: int, optional: bool = False, high: int | None = None) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        none = " or None" if optional else ""
        raise ValueError(f"{name}={value!r} must be an integer >= {low}{none}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name}={value} is out of range; it must be {allowed}")


@dataclass
class EngineConfig:
    model: str = "tiny"  # a preset, or the path of a local Hugging Face checkpoint directory
    device: str = "auto"
    max_tokens_per_step: int = 64
    prefill_chunk_size: int = 16
    max_decode_per_step: int | None = None
    kv_layout: str = "paged"
    block_size: int = 16
    num_blocks: int | None = None  # None: sized from the model and device; sharded: each shard's pool
    # A memory budget for the paged KV pool instead of a block count: the pool gets as many blocks
    # as fit in these bytes, so a compressed pool (the kv_int8 plugin) gets more blocks for the same
    # memory. Not with num_blocks.
    kv_memory_bytes: int | None = None
    # Requests whose prompt plus max_new_tokens is at most this many tokens get one contiguous run of
    # blocks reserved for their whole length at admission; longer ones are paged on demand
    # (kv/contiguous_runs.py). 0: every request is paged on demand.
    contiguous_up_to: int = 0
    attention: str = "auto"
    policy: str = "fcfs"
    static_batch_size: int = 8
    dtype: str = "auto"
    seed: int = 0
    eos_token_id: int | None = None  # None: the checkpoint's end-of-sequence ids (presets have none)
    ignore_eos: bool = False  # generate exactly max_new_tokens, whatever the checkpoint says (benchmarks)
    # Decode-only steps from CUDA graphs (decode_graphs.py). auto: on CUDA with a paged cache and
    # the sdpa/flex backend. on: also off CUDA, where the same padded path runs uncaptured (tests).
    # Either way a layer wrapped by an attention plugin, or a cache plugin, runs eagerly.
    decode_graphs: str = "auto"
    # How decodes read the paged pool (attention/decode_kernel.py): auto takes the Triton kernel on
    # CUDA when it can run, the block gather elsewhere.
    decode_attention: str = "auto"
    # Schedule and launch step N+1 while the device still runs step N (overlap.py): step() then
    # returns each record one call later. Greedy requests that end at max_new_tokens, no plugins.
    overlap_steps: bool = False
    # Speculative decoding (engine/speculation/): a decode also verifies up to k proposed tokens.
    # "ngram": prompt lookup in the request's own tokens; "draft": a smaller model of the same
    # vocabulary (draft_model, a preset, built with this seed: the target's own preset is the target).
    speculative: str | None = None
    num_speculative_tokens: int = 4
    draft_model: str = "micro"
    # Requests share the KV blocks of a common prompt prefix (kv/prefix_cache.py). None: on for the
    # paged layout, off for dense (which has no blocks to share).
    prefix_caching: bool | None = None
    # KV sharded over processes on torch.distributed (engine/distributed): one process per shard,
    # rank 0 (this process) drives. heads: tensor parallel, each shard holds its share of the heads
    # (and of the MLP) for every block; sequence: a request's blocks spread over the shards, each
    # shard's partial attention merged by log-sum-exp.
    shards: int = 1
    shard_by: str = "heads"
    shard_timeout_s: float = 60.0  # a collective that waits longer than this ends the run (a hung worker)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r} must be a preset ({', '.join(MODELS)}) or a checkpoint directory")
        if self.model not in MODELS:
            from .checkpoint import checkpoint_dir

            checkpoint_dir(self.model)  # one line naming the path when there is no such directory
        _check_choice("device", self.device, DEVICES)
        _check_choice("kv_layout", self.kv_layout, KV_LAYOUTS)
        _check_choice("attention", self.attention, ATTENTION_BACKENDS)
        _check_choice("policy", self.policy, POLICIES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("decode_graphs", self.decode_graphs, DECODE_GRAPHS)
        _check_choice("decode_attention", self.decode_attention, DECODE_ATTENTION)
        if self.decode_graphs == "on" and (self.kv_layout != "paged" or self.attention == "reference"):
            raise ValueError(f"decode_graphs='on' needs kv_layout='paged' and attention 'sdpa', 'flex' or 'auto' "
                             f"(got {self.kv_layout!r}, {self.attention!r}); use decode_graphs='auto' or 'off'")
        _check_int("max_tokens_per_step", self.max_tokens_per_step, 1)
        _check_int("prefill_chunk_size", self.prefill_chunk_size, 1)
        _check_int("max_decode_per_step", self.max_decode_per_step, 1, optional=True)
        _check_int("block_size", self.block_size, 1)
        _check_int("num_blocks", self.num_blocks, 1, optional=True)
        _check_int("kv_memory_bytes", self.kv_memory_bytes, 1, optional=True)
        if self.kv_memory_bytes is not None and self.num_blocks is not None:
            raise ValueError(f"kv_memory_bytes={self.kv_memory_bytes} and num_blocks={self.num_blocks} both size the "
                             f"KV pool; give one of them")
        if self.kv_memory_bytes is not None and self.kv_layout != "paged":
            raise ValueError(f"kv_memory_bytes={self.kv_memory_bytes} sizes the paged pool; the dense layout grows "
                             f"on demand: set kv_layout='paged' or drop kv_memory_bytes")
        _check_int("contiguous_up_to", self.contiguous_up_to, 0)
        if self.contiguous_up_to:
            self._check_contiguous()
        _check_int("static_batch_size", self.static_batch_size, 1)
        _check_int("seed", self.seed, 0, high=MAX_SEED)
        _check_int("eos_token_id", self.eos_token_id, 0, optional=True)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos={self.ignore_eos!r} must be true or false")
        _check_int("shards", self.shards, 1, high=64)
        _check_choice("shard_by", self.shard_by, SHARD_BY)
        if (isinstance(self.shard_timeout_s, bool) or not isinstance(self.shard_timeout_s, (int, float))
                or not 0.5 <= self.shard_timeout_s <= 3600):
            raise ValueError(f"shard_timeout_s={self.shard_timeout_s!r} must be a number of seconds in 0.5..3600")
        if self.shards > 1:
            self._check_shardable()
        if not isinstance(self.overlap_steps, bool):
            raise ValueError(f"overlap_steps={self.overlap_steps!r} must be true or false")
        if self.prefix_caching is not None and not isinstance(self.prefix_caching, bool):
            raise ValueError(f"prefix_caching={self.prefix_caching!r} must be true, false or None (auto)")
        if self.prefix_caching and self.kv_layout != "paged":
            raise ValueError(f"prefix_caching=True needs kv_layout='paged' (got {self.kv_layout!r}): only blocks "
                             f"can be shared; use prefix_caching=False or None")
        if self.overlap_steps and self.eos_token_id is not None:
            raise ValueError("overlap_steps=True needs eos_token_id=None: the next step is scheduled before this "
                             "step's tokens are read, so requests must end at max_new_tokens")

        if self.speculative == "off":
            self.speculative = None
        if self.speculative is not None and self.speculative not in SPECULATIVE:
            raise ValueError(f"speculative={self.speculative!r} is not allowed; choose one of: None (or 'off'), "
                             f"'ngram', 'draft'")
        _check_int("num_speculative_tokens", self.num_speculative_tokens, 1, high=MAX_SPECULATIVE_TOKENS)
        _check_choice("draft_model", self.draft_model, DRAFT_MODELS)
        if self.speculative and self.overlap_steps:
            raise ValueError("speculative decoding needs each step's tokens on the host to propose the next "
                             "drafts; drop overlap_steps or speculative")

    @property
    def caches_prefixes(self) -> bool:
        """Whether prefix caching is on, None resolved by the KV layout (and off for a sharded run or
        contiguous runs)."""
        if self.prefix_caching is None:
            return self.kv_layout == "paged" and self.shards == 1 and not self.contiguous_up_to
        return self.prefix_caching

    def _check_contiguous(self) -> None:
        """Settings contiguous runs cannot honour, refused in one line each."""
        n = self.contiguous_up_to
        if self.kv_layout != "paged":
            raise ValueError(f"contiguous_up_to={n} reserves runs of blocks in the paged pool; set "
                             f"kv_layout='paged' or contiguous_up_to=0")
        # A run is its request's alone: a shared prefix block would sit in two runs, and rejected
        # drafts would give back the reserved tail. Not built.
        if self.prefix_caching:
            raise ValueError(f"contiguous_up_to={n} does not share prefix blocks; use prefix_caching=False "
                             f"(or None) or contiguous_up_to=0")
        if self.speculative not in (None, "off"):
            raise ValueError(f"contiguous_up_to={n} does not verify drafts; use speculative=None or "
                             f"contiguous_up_to=0")
        if self.shards > 1:
            raise ValueError(f"contiguous_up_to={n} runs on one device; use shards=1 or contiguous_up_to=0")

    def _check_shardable(self) -> None:
        """Settings a sharded run cannot honour, refused in one line each."""
        if self.kv_layout != "paged":
            raise ValueError(f"shards={self.shards} needs kv_layout='paged' (blocks are what the shards hold); "
                             f"use kv_layout='paged' or shards=1")
        if self.overlap_steps:
            raise ValueError(f"shards={self.shards} cannot overlap steps; use overlap_steps=False or shards=1")
        if self.decode_graphs == "on":
            raise ValueError(f"shards={self.shards} runs decodes eagerly (a collective per layer); use "
                             f"decode_graphs='auto' or 'off'")
        # Not built yet for shards: the pools would have to share named blocks, the draft model its shards.
        if self.prefix_caching:
            raise ValueError(f"shards={self.shards} does not share prefix blocks yet; use prefix_caching=False or "
                             f"shards=1")
        if self.speculative not in (None, "off"):
            raise ValueError(f"shards={self.shards} does not verify drafts yet; use speculative=None or shards=1")
        if self.model not in DRAFT_MODELS:  # every random preset
            raise ValueError(f"shards={self.shards} runs the random presets ({', '.join(MODELS)}); a checkpoint "
                             f"({self.model}) runs with shards=1")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
