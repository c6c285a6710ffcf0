"""KV eviction for long generations: sinks + a recent window (StreamingLLM), as a cache plugin.

With sliding-window attention (sliding_window.py) a query at position p never reads keys older
than p - window + 1, except the first `sinks` positions. Their blocks are then dead weight: this
plugin gives them back to the pool as soon as no query can read them, in `release_blocks` after the
step's forward pass (every layer has stored this step's keys and read what it needed; the runner's
store learns the new tables with the next step's plan). A long generation then
holds about (sinks + window) / block_size + 2 blocks however long it runs, instead of one more
block every block_size tokens: the pool holds more requests and preempts less.

Exact or lossy: outputs are identical to sliding_window with the same window and sinks (the
evicted keys were masked out anyway); against full attention it is as lossy as that window.
`before_append` is left as it is (it could compress or deduplicate what is stored).
"""

from __future__ import annotations

from ..base import CachePlugin
from .sliding_window import SlidingWindowPlugin


class KVWindowEvictPlugin(SlidingWindowPlugin, CachePlugin):
    name = "kv_window_evict"

    def __init__(self, window: int = 32, sinks: int = 4):
        super().__init__(window=window, sinks=sinks)
        self.evicted_blocks = 0

    def check_config(self, config) -> None:
        if config.cache.kv_layout != "paged":
            raise ValueError("plugin kv_window_evict gives paged blocks back; set kv_layout = \"paged\"")
        # A given-back entry points at a stand-in block: a prefix name or a rolled-back draft tail
        # could then reach a block that holds other keys. Not combined until the tables say so.
        if config.caches_prefixes:
            raise ValueError("plugin kv_window_evict cannot run with prefix caching; set prefix_caching = false")
        if config.speculation is not None:
            raise ValueError("plugin kv_window_evict cannot run with speculative decoding; drop speculative")

    def release_blocks(self, blocks, items) -> None:
        size = blocks.block_size
        first_free = -(-self.sinks // size)  # blocks before it hold a sink position
        evicted = blocks.evicted
        for item in items:
            rid = item.request_id
            # Positions below first_pos - window + 1 are out of reach of this step's queries and of
            # every later one (positions only grow); so is every block that ends before that.
            dead = (item.first_pos - self.window + 1) // size
            gone = evicted.get(rid, ())
            for index in range(first_free, dead):
                if index not in gone:
                    blocks.evict(rid, index)
                    self.evicted_blocks += 1

    def describe(self) -> str:
        return (f"kv window evict: {self.sinks} sink + last {self.window} keys; "
                f"{self.evicted_blocks} blocks given back early")
