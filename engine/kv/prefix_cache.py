"""Prefix caching: full KV blocks named by a chained hash of their tokens, shared between requests.

A full block's keys and values depend only on the tokens up to its end (the model is causal), so a
block is named by a hash of its own tokens and the name of the block before it: equal names mean
an equal prefix, whatever request computed it. When a request is admitted, its tokens are named
block by block and the longest run of names already in the cache is shared instead of computed:
the request starts with those blocks in its table and `num_computed` at their end. Shared blocks
are counted (the allocator's reference counts); when the last holder lets go, a named block is not
wiped but kept here as *cached-free*: evictable, least recently used first, and revived when a
later request asks for the same name before the pool needs the block.

Why no copy-on-write: only full blocks are ever named, and a request writes keys only at positions
from its `num_computed` on. A match ends at a block boundary and never covers the sequence's last
token (that one must be computed so that its logits can be sampled), so every write after a hit
lands in a block of the request's own; nobody ever writes into a block that others hold.

Names are blake2b digests (128 bits): a collision would silently hand one request another's keys,
which Python's 64-bit `hash` of a tuple makes possible at scale. Only tokens known when a request is
admitted (its prompt, or its prompt and output when it recomputes after preemption) are named;
blocks of tokens generated later are not shared.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import blake2b
from typing import Protocol


class Sequence(Protocol):
    """What the cache needs of a request (engine.requests.request.Request has it)."""

    id: int

    @property
    def num_tokens(self) -> int: ...

    def token_slice(self, start: int, count: int) -> list[int]: ...


def chain_hashes(tokens: list[int], block_size: int, parent: bytes = b"") -> list[bytes]:
    """The name of every full block of `tokens`: each hashes its tokens and the name before it."""
    names = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        block = tokens[start:start + block_size]
        if min(block) < 0:  # a placeholder (an overlapped step's token not read back yet): unknown
            break
        parent = blake2b(parent + array("q", block).tobytes(), digest_size=16).digest()
        names.append(parent)
    return names


@dataclass(frozen=True, slots=True)
class PrefixHit:
    """What admission found: blocks to share, the tokens they hold, and how many of them were
    cached-free (reviving one takes it from the pool's free count, like a new block)."""

    blocks: tuple[int, ...] = ()
    tokens: int = 0
    revived: int = 0
    looked_up: int = 0  # full blocks the request could have matched (the hit rate's denominator)


NO_HIT = PrefixHit()


@dataclass(slots=True)
class StepCounts:
    """This step's cache traffic, for the record (begin_step starts it afresh)."""

    hit_blocks: int = 0
    hit_tokens: int = 0
    lookup_blocks: int = 0
    lookup_tokens: int = 0
    evicted: int = 0


class PrefixCache:
    """Names of full blocks, and the cached-free blocks. The allocator owns the blocks and their
    reference counts; this only remembers what each named block holds."""

    def __init__(self, block_size: int, num_blocks: int):
        self.block_size = block_size
        self.cached_map = bytearray(num_blocks)  # 1 for a cached-free block: what a record copies
        self.block_of: dict[bytes, int] = {}  # name -> block holding it
        self.name_of: dict[int, bytes] = {}  # block -> its name
        self.evictable: OrderedDict[int, None] = OrderedDict()  # named, nobody holds them; oldest first
        self._names: dict[int, tuple[int, list[bytes]]] = {}  # request id -> (tokens named, names)
        self._unnamed: dict[int, int] = {}  # request id -> its first block not named yet (prefilling)
        self.counts = StepCounts()
        self.version = 0  # changes whenever the cached-free blocks do
        self.hits: dict[int, int] = {}  # this step: request id -> tokens it reused

    # -- admission ----------------------------------------------------------------------------
    def names(self, request: Sequence) -> list[bytes]:
        """The names of the request's full blocks, as it stands (kept while its tokens do not change)."""
        n = request.num_tokens
        known = self._names.get(request.id)
        if known is None or known[0] != n:
            known = (n, chain_hashes(request.token_slice(0, n), self.block_size))
            self._names[request.id] = known
        return known[1]

    def match(self, request: Sequence) -> PrefixHit:
        """The longest run of the request's leading blocks already cached. It stops short of the last
        token, which must be computed to sample from."""
        names = self.names(request)
        limit = min(len(names), (request.num_tokens - 1) // self.block_size)
        blocks = []
        revived = 0
        for name in names[:limit]:
            block = self.block_of.get(name)
            if block is None:
                break
            blocks.append(block)
            revived += block in self.evictable
        return PrefixHit(tuple(blocks), len(blocks) * self.block_size, revived, limit) if blocks else \
            PrefixHit(looked_up=limit)

    def admitted(self, request: Sequence, hit: PrefixHit) -> None:
        """Counts the admission and remembers which of the request's blocks to name once computed."""
        c = self.counts
        c.lookup_blocks += hit.looked_up
        c.lookup_tokens += request.num_tokens
        if hit.blocks:
            c.hit_blocks += len(hit.blocks)
            c.hit_tokens += hit.tokens
            self.hits[request.id] = hit.tokens
        if len(self.names(request)) > len(hit.blocks):
            self._unnamed[request.id] = len(hit.blocks)

    def revive(self, block: int) -> None:
        self.evictable.pop(block, None)
        self.cached_map[block] = 0
        self.version += 1

    # -- after a step ---------------------------------------------------------------------------
    def name_computed(self, tables: dict[int, tuple[int, ...]], stored: dict[int, int]) -> None:
        """Names the blocks that prefilling requests have filled (their keys are in the pool now).
        A name another block already holds (two requests computed the same prefix at once) is
        left to that block: this one stays unnamed and is wiped when freed."""
        block_size = self.block_size
        for rid, first in list(self._unnamed.items()):
            names = self._names[rid][1]
            full = min(len(names), stored.get(rid, 0) // block_size)
            if full <= first:
                continue
            table = tables[rid]
            for i in range(first, full):
                name, block = names[i], table[i]
                if name not in self.block_of and block not in self.name_of:
                    self.block_of[name] = block
                    self.name_of[block] = name
            if full == len(names):
                del self._unnamed[rid]
            else:
                self._unnamed[rid] = full

    # -- freeing --------------------------------------------------------------------------------
    def forget(self, request_id: int) -> None:
        """The request let go of its blocks (finished or preempted)."""
        self._names.pop(request_id, None)
        self._unnamed.pop(request_id, None)

    def keep(self, block: int) -> bool:
        """A block nobody holds any more: kept as cached-free if it is named (True), else not."""
        if block in self.name_of:
            self.evictable[block] = None  # most recently used last
            self.cached_map[block] = 1
            self.version += 1
            return True
        return False

    def evict(self) -> int:
        """The least recently used cached-free block, its name forgotten, for reuse."""
        block, _ = self.evictable.popitem(last=False)
        self.cached_map[block] = 0
        del self.block_of[self.name_of.pop(block)]
        self.counts.evicted += 1
        self.version += 1
        return block

    def begin_step(self) -> None:
        """A new step's traffic starts at zero (the last one's is in its record)."""
        self.counts, self.hits = StepCounts(), {}
