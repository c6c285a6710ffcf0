"""Settings of different sections that exclude each other: the one place they are refused.

A section checks its own fields (and the rules among them) when it is built; what needs two
sections is checked here, once EngineConfig holds them all, in one line each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import MODELS
from .speculative import DRAFT_MODELS

if TYPE_CHECKING:
    from .engine_config import EngineConfig


def check(config: EngineConfig) -> None:
    cache, runner, speculation, parallel = config.cache, config.runner, config.speculation, config.parallel
    if runner.decode_graphs == "on" and (cache.kv_layout != "paged" or runner.attention == "reference"):
        raise ValueError(f"decode_graphs='on' needs kv_layout='paged' and attention 'sdpa', 'flex' or 'auto' "
                         f"(got {cache.kv_layout!r}, {runner.attention!r}); use decode_graphs='auto' or 'off'")
    if cache.contiguous_up_to:
        n = cache.contiguous_up_to
        # A run is its request's alone: rejected drafts would give back the reserved tail. Not built.
        if speculation is not None:
            raise ValueError(f"contiguous_up_to={n} does not verify drafts; use speculative=None or "
                             f"contiguous_up_to=0")
        if parallel is not None:
            raise ValueError(f"contiguous_up_to={n} runs on one device; use shards=1 or contiguous_up_to=0")
    if parallel is not None:
        _check_shardable(config)
    if runner.overlap_steps and config.llm.eos_token_id is not None:
        raise ValueError("overlap_steps=True needs eos_token_id=None: the next step is scheduled before this "
                         "step's tokens are read, so requests must end at max_new_tokens")
    if speculation is not None and runner.overlap_steps:
        raise ValueError("speculative decoding needs each step's tokens on the host to propose the next "
                         "drafts; drop overlap_steps or speculative")


def _check_shardable(config: EngineConfig) -> None:
    """Settings a sharded run cannot honour."""
    assert config.parallel is not None
    shards = config.parallel.shards
    if config.cache.kv_layout != "paged":
        raise ValueError(f"shards={shards} needs kv_layout='paged' (blocks are what the shards hold); "
                         f"use kv_layout='paged' or shards=1")
    if config.runner.overlap_steps:
        raise ValueError(f"shards={shards} cannot overlap steps; use overlap_steps=False or shards=1")
    if config.runner.decode_graphs == "on":
        raise ValueError(f"shards={shards} runs decodes eagerly (a collective per layer); use "
                         f"decode_graphs='auto' or 'off'")
    # Not built yet for shards: the pools would have to share named blocks, the draft model its shards.
    if config.cache.prefix_caching:
        raise ValueError(f"shards={shards} does not share prefix blocks yet; use prefix_caching=False or "
                         f"shards=1")
    if config.speculation is not None:
        raise ValueError(f"shards={shards} does not verify drafts yet; use speculative=None or shards=1")
    if config.llm.name not in DRAFT_MODELS:  # every random preset
        raise ValueError(f"shards={shards} runs the random presets ({', '.join(MODELS)}); a checkpoint "
                         f"({config.llm.name}) runs with shards=1")


def caches_prefixes(config: EngineConfig) -> bool:
    """Whether prefix caching is on: None resolved by the KV layout, and off for a sharded run or
    contiguous runs."""
    cache = config.cache
    if cache.prefix_caching is None:
        return cache.kv_layout == "paged" and config.parallel is None and not cache.contiguous_up_to
    return cache.prefix_caching
