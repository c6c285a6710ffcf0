"""EngineConfig: every knob of the engine, validated when it is built."""

from __future__ import annotations

from dataclasses import dataclass, fields

MODELS = ("tiny", "small")
DEVICES = ("auto", "cpu", "cuda")
KV_LAYOUTS = ("paged", "dense")
ATTENTION_BACKENDS = ("auto", "reference", "sdpa", "flex")
POLICIES = ("fcfs", "static")
DECODE_GRAPHS = ("auto", "on", "off")
DECODE_ATTENTION = ("auto", "triton", "gather")
DTYPES = ("auto", "float32", "float64", "bfloat16")
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
    model: str = "tiny"
    device: str = "auto"
    max_tokens_per_step: int = 64
    prefill_chunk_size: int = 16
    max_decode_per_step: int | None = None
    kv_layout: str = "paged"
    block_size: int = 16
    num_blocks: int | None = None  # None: sized from the model and device
    # A memory budget for the paged KV pool instead of a block count: the pool gets as many blocks
    # as fit in these bytes, so a compressed pool (the kv_int8 plugin) gets more blocks for the same
    # memory. Not with num_blocks.
    kv_memory_bytes: int | None = None
    attention: str = "auto"
    policy: str = "fcfs"
    static_batch_size: int = 8
    dtype: str = "auto"
    seed: int = 0
    eos_token_id: int | None = None  # None: generate exactly max_new_tokens
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

    def __post_init__(self) -> None:
        _check_choice("model", self.model, MODELS)
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
        _check_int("static_batch_size", self.static_batch_size, 1)
        _check_int("seed", self.seed, 0, high=MAX_SEED)
        _check_int("eos_token_id", self.eos_token_id, 0, optional=True)
        if not isinstance(self.overlap_steps, bool):
            raise ValueError(f"overlap_steps={self.overlap_steps!r} must be true or false")
        if self.overlap_steps and self.eos_token_id is not None:
            raise ValueError("overlap_steps=True needs eos_token_id=None: the next step is scheduled before this "
                             "step's tokens are read, so requests must end at max_new_tokens")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
