"""The prefix cache as a step's record shows it: shared and cached-free blocks, and the step's hits.

A paged block is *owned* (in one request's table), *shared* (in several: `shared` gives how many),
*cached-free* (in nobody's table but still holding the keys of a named prefix, evictable, `cached`)
or free. Plain data like every record; None in a run without prefix caching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


class BlockSet(Sequence):
    """Block numbers in increasing order, kept as a map of the pool (one byte a block): taking one
    each step is a copy of bytes (about 5 us for 65,536 blocks, where a tuple of them took ms), and
    the numbers are listed only when someone reads them (the KV grid, a JSON line)."""

    __slots__ = ("_map", "_blocks")

    def __init__(self, pool_map: bytes):
        self._map = pool_map
        self._blocks: list[int] | None = None

    @classmethod
    def of(cls, blocks: Iterable[int], num_blocks: int) -> BlockSet:
        pool_map = bytearray(num_blocks)
        for block in blocks:
            pool_map[block] = 1
        return cls(bytes(pool_map))

    def _list(self) -> list[int]:
        if self._blocks is None:
            found, pool_map = [], self._map
            at = pool_map.find(1)
            while at != -1:
                found.append(at)
                at = pool_map.find(1, at + 1)
            self._blocks = found
        return self._blocks

    def __getitem__(self, index):
        return self._list()[index]

    def __iter__(self):
        return iter(self._list())

    def __len__(self) -> int:
        return len(self._list()) if self._blocks is not None else self._map.count(1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(self._list())


@dataclass(slots=True)
class PrefixView:
    shared: Mapping[str, int]  # block (as str, a JSON key) -> requests holding it, for blocks held by 2 or more
    cached: Sequence[int]  # cached-free blocks (nobody holds them, their keys kept), in block order
    hits: Mapping[str, int]  # request id -> prompt tokens it reused when admitted in this step
    hit_blocks: int  # blocks shared or revived on admission in this step
    hit_tokens: int  # tokens they hold: prefill tokens not computed
    lookup_blocks: int  # full blocks the step's admissions looked up (hit_blocks of them were cached)
    lookup_tokens: int  # tokens the step's admissions had to compute without the cache
    new_blocks: int  # blocks handed out fresh in this step
    evicted_blocks: int  # cached-free blocks taken back for new keys in this step
