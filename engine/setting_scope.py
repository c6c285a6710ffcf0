"""Which engine settings take effect, given the others.

Some settings only matter under another one: `shard_by` with more than one shard, `draft_model`
with a draft model proposing, `static_batch_size` under the static policy. Outside its scope a
setting changes nothing in the run, so whatever tells runs apart by their settings (the compare
table's settings column, a compare pane's header) leaves it out.
"""

from __future__ import annotations

from collections.abc import Callable

from .config import EngineConfig

# A setting -> whether it takes effect under a config; a setting not named here always does.
SCOPES: dict[str, Callable[[EngineConfig], bool]] = {
    "shard_by": lambda c: c.shards > 1,
    "shard_timeout_s": lambda c: c.shards > 1,
    "num_speculative_tokens": lambda c: c.speculative is not None,
    "draft_model": lambda c: c.speculative == "draft",
    "static_batch_size": lambda c: c.policy == "static",
    # The dense layout keeps no blocks: it grows each request's keys on demand.
    "block_size": lambda c: c.kv_layout == "paged",
    "num_blocks": lambda c: c.kv_layout == "paged",
    "kv_memory_bytes": lambda c: c.kv_layout == "paged",
    "prefix_caching": lambda c: c.kv_layout == "paged",
}


def takes_effect(config: EngineConfig, name: str) -> bool:
    """Whether setting `name` changes anything in a run under `config`."""
    scope = SCOPES.get(name)
    return scope is None or scope(config)
