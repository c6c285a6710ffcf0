"""The prefix cache as a step's record shows it: shared and cached-free blocks, and the step's hits.

A paged block is *owned* (in one request's table), *shared* (in several: `shared` gives how many),
*cached-free* (in nobody's table but still holding the keys of a named prefix, evictable, `cached`)
or free. Plain data like every record; None in a run without prefix caching.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class PrefixView:
    shared: Mapping[str, int]  # block (as str, a JSON key) -> requests holding it, for blocks held by 2 or more
    cached: Sequence[int]  # cached-free blocks, least recently used (first to be evicted) first
    hits: Mapping[str, int]  # request id -> prompt tokens it reused when admitted in this step
    hit_blocks: int  # blocks shared or revived on admission in this step
    hit_tokens: int  # tokens they hold: prefill tokens not computed
    lookup_blocks: int  # full blocks the step's admissions looked up (hit_blocks of them were cached)
    lookup_tokens: int  # tokens the step's admissions had to compute without the cache
    new_blocks: int  # blocks handed out fresh in this step
    evicted_blocks: int  # cached-free blocks taken back for new keys in this step


def reuse_events(prefix: PrefixView | None, block_size: int) -> list[str]:
    """One line per request that reused cached blocks in the step, for a narration or a log."""
    if prefix is None:
        return []
    return [f"request {rid} reused {tokens // block_size} blocks ({tokens} tokens)"
            for rid, tokens in sorted(prefix.hits.items(), key=lambda kv: int(kv[0]))]
