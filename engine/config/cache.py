"""The cache section: how the KV cache is laid out, sized and shared."""

from __future__ import annotations

from dataclasses import dataclass

from .fields import Section, setting

KV_LAYOUTS = ("paged", "dense")
MAX_POOL_TOKENS = 1 << 20  # num_blocks (and num_blocks * block_size) a scenario file may ask for
MAX_KV_MEMORY = 1 << 32  # kv_memory_bytes a scenario file may ask for: 4 GiB

PAGED = ("kv_layout", "paged")  # the dense layout keeps no blocks: it grows each request's keys on demand
DENSE = ("kv_layout", "dense")
MAX_DENSE_TOKENS = MAX_POOL_TOKENS << 4  # dense_max_tokens a scenario file may ask for


@dataclass(frozen=True)
class CacheConfig(Section):
    fixed_because = "the KV pool is laid out when the engine is built, and blocks in use hold their keys"

    kv_layout: str = setting("paged", type=str, choices=KV_LAYOUTS,
                             help="paged: fixed-size blocks from one pool; dense: one growing tensor per request.")
    block_size: int = setting(16, type=int, low=1, only_if=PAGED, help="Tokens per KV block.")
    num_blocks: int | None = setting(None, type=int, low=1, optional=True, limit=MAX_POOL_TOKENS, only_if=PAGED,
                                     help="Blocks in the pool (None: sized from the model and device; sharded: "
                                          "each shard's pool).")
    # A memory budget instead of a block count: the pool gets as many blocks as fit in these bytes, so
    # a compressed pool (the kv_int8 plugin) gets more blocks for the same memory.
    kv_memory_bytes: int | None = setting(None, type=int, low=1, optional=True, limit=MAX_KV_MEMORY, only_if=PAGED,
                                          help="Size the paged pool by bytes instead of num_blocks.")
    # kv/dense_store.py: each request's tensors grow on demand; this caps what all of them hold at once
    dense_max_tokens: int | None = setting(None, type=int, low=1, optional=True, limit=MAX_DENSE_TOKENS,
                                           only_if=DENSE, metavar="TOKENS",
                                           help="Dense layout: the KV tokens all requests may hold at once (None: "
                                                "sized from the model and device, as the paged pool is); a request is "
                                                "admitted when its prompt plus max_new_tokens fit beside those "
                                                "admitted, else it waits (no free KV memory).")
    # kv/contiguous_runs.py
    contiguous_up_to: int = setting(0, type=int, low=0, metavar="TOKENS",
                                    help="Requests whose prompt plus max_new_tokens is at most TOKENS get one "
                                         "contiguous run of KV blocks reserved for their whole length; longer ones "
                                         "are paged on demand (0: all paged).")
    # kv/prefix_cache.py
    prefix_caching: bool | None = setting(None, type=bool, optional=True, only_if=PAGED, flag="--no-prefix-caching",
                                          help="Requests share the KV blocks of a common prompt prefix (None: on for "
                                               "the paged layout, off for dense, sharded runs and contiguous runs).",
                                          flag_help="Compute every prompt in full: no KV blocks shared between "
                                                    "requests (prefix caching is on by default with the paged "
                                                    "layout).")

    def __post_init__(self) -> None:
        super().__post_init__()
        paged = self.kv_layout == "paged"
        if self.kv_memory_bytes is not None and self.num_blocks is not None:
            raise ValueError(f"kv_memory_bytes={self.kv_memory_bytes} and num_blocks={self.num_blocks} both size the "
                             f"KV pool; give one of them")
        if self.kv_memory_bytes is not None and not paged:
            raise ValueError(f"kv_memory_bytes={self.kv_memory_bytes} sizes the paged pool; the dense layout grows "
                             f"on demand: set kv_layout='paged' or drop kv_memory_bytes")
        if self.contiguous_up_to:
            n = self.contiguous_up_to
            if not paged:
                raise ValueError(f"contiguous_up_to={n} reserves runs of blocks in the paged pool; set "
                                 f"kv_layout='paged' or contiguous_up_to=0")
            # A run is its request's alone: a shared prefix block would sit in two runs. Not built.
            if self.prefix_caching:
                raise ValueError(f"contiguous_up_to={n} does not share prefix blocks; use prefix_caching=False "
                                 f"(or None) or contiguous_up_to=0")
        if self.prefix_caching and not paged:
            raise ValueError(f"prefix_caching=True needs kv_layout='paged' (got {self.kv_layout!r}): only blocks "
                             f"can be shared; use prefix_caching=False or None")
