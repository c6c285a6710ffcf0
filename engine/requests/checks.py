"""What makes a request acceptable, checked before anything is queued: a ValueError names the bad
argument and what would fix it, and the engine is left exactly as it was."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from ..config import EngineConfig
from ..kv.block_manager import BlockManager
from ..models.llama import ModelSpec

MAX_REQUEST_ID = 2**53


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_request(config: EngineConfig, spec: ModelSpec, blocks: BlockManager | None, used_ids: Container[int],
                  tokens: Any, max_new_tokens: Any, arrival_step: Any, priority: Any, request_id: Any, temperature: Any,
                  top_k: Any, seed: Any, deadline_step: Any, dense_tokens: int | None = None,
                  top_p: Any = 1.0) -> None:
    """Arguments are Any: they come from callers and files we do not trust."""
    if not isinstance(tokens, (list, tuple)):
        raise ValueError(f"prompt={tokens!r} must be a string or a list of token ids")
    if not tokens:
        raise ValueError("prompt is empty; give at least one token (or a non-empty string)")
    bad = [t for t in tokens if not _is_int(t) or not 0 <= t < spec.vocab_size]
    if bad:
        raise ValueError(f"prompt token {bad[0]!r} is out of range; token ids must be integers in "
                         f"0..{spec.vocab_size - 1} for model {spec.name!r} (a vocabulary of {spec.vocab_size})")
    for name, value, low in (("max_new_tokens", max_new_tokens, 1), ("arrival_step", arrival_step, 0),
                             ("top_k", top_k, 0)):
        if not _is_int(value) or value < low:
            raise ValueError(f"{name}={value!r} is out of range; it must be an integer >= {low}")
    if not _is_int(priority):
        raise ValueError(f"priority={priority!r} must be an integer")
    if deadline_step is not None and (not _is_int(deadline_step) or deadline_step < 0):
        raise ValueError(f"deadline_step={deadline_step!r} must be an integer >= 0 or None")
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not (temperature == 0 or 1e-3 <= temperature <= 1e3)):
        # Not nan, and not so close to 0 that logits / temperature overflows.
        raise ValueError(f"temperature={temperature!r} is out of range; use 0 (greedy) or a number in 0.001..1000")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} is out of range; it must be a number above 0 and at most 1")
    if temperature > 0 and config.runner.overlap_steps:
        raise ValueError(f"temperature={temperature!r}: overlap_steps=True samples greedily on the device; "
                         f"use temperature 0 or overlap_steps=False")
    total = len(tokens) + max_new_tokens
    if total > spec.max_context:
        raise ValueError(f"prompt ({len(tokens)} tokens) + max_new_tokens ({max_new_tokens}) = {total} "
                         f"exceeds the context of model {spec.name!r} ({spec.max_context}); shorten the prompt "
                         f"or lower max_new_tokens")
    if blocks is not None:
        need = blocks.blocks_for(total)
        if need > blocks.num_blocks:
            if config.cache.kv_memory_bytes is not None:
                raise ValueError(f"kv_memory_bytes={config.cache.kv_memory_bytes} holds {blocks.num_blocks} blocks "
                                 f"of {blocks.block_size} tokens, too few: one request of {total} tokens needs "
                                 f"{need}; raise kv_memory_bytes")
            raise ValueError(f"num_blocks={blocks.num_blocks} is too small: one request of {total} tokens "
                             f"needs {need} blocks of {blocks.block_size}; raise num_blocks to at least {need}")
    if dense_tokens is not None and total > dense_tokens:
        named = "dense_max_tokens" if config.cache.dense_max_tokens is not None else "the dense layout's cap"
        raise ValueError(f"{named}={dense_tokens} is too small: one request of {total} tokens (prompt plus "
                         f"max_new_tokens) would never be admitted; raise dense_max_tokens to at least {total}")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise ValueError(f"seed={seed!r} is out of range; it must be an integer in 0..2**63-1")
    if request_id is not None:
        if not _is_int(request_id) or not 0 <= request_id <= MAX_REQUEST_ID:
            raise ValueError(f"request_id={request_id!r} must be an integer in 0..2**53 (what JSON, and so a "
                             f"recording, holds exactly)")
        if request_id in used_ids:
            raise ValueError(f"request_id={request_id} is already used; give each request its own id")
