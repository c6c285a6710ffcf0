"""BlockManager: which KV blocks each request holds. The scheduler's side of the paged cache.

Pure Python, no torch: the scheduler owns it, decides with it (admission, allocation, preemption
victims, prefix sharing, contiguous runs, draft rollback, early eviction) and can be tested without
a tensor in sight. The tensors live in the runner's store (paged_store.py), which learns what
changed from each step's plan (`take_changes`): the tables that were handed blocks or gave some
back, and the requests that let go of theirs.

Blocks come from a free list. With prefix caching (prefix_cache.py) a block may sit in several
tables: `ref_counts` says in how many, and a block leaves use only when the last of them lets go;
a named block nobody holds stays cached-free (evictable) until the pool needs it. A request whose
whole length is reserved at admission holds one run of consecutive blocks (contiguous_runs.py).
"""

from __future__ import annotations

from collections import deque

from .contiguous_runs import first_run, longest_run, run_tokens
from .prefix_cache import NO_HIT, PrefixCache, PrefixHit


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False, contiguous_up_to: int = 0):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))  # holding nothing worth keeping
        # Tuples, replaced when they change: a StepRecord or a plan can hold them without copying.
        self.tables: dict[int, tuple[int, ...]] = {}
        self.ref_counts = [0] * num_blocks
        self.shared: dict[int, int] = {}  # block -> reference count, for blocks in two tables or more
        self.prefix = PrefixCache(block_size, num_blocks) if prefix_caching else None
        # Requests this long or shorter get a run reserved for their whole length (contiguous_runs.py).
        self.contiguous_up_to = contiguous_up_to
        # Requests whose table is one such run: it never grows, so they are never short.
        self.runs: set[int] = set()
        # Table entries whose block was given back early (evict): request id -> indices. Such an
        # entry keeps a stand-in (a live block of the same request) so the table keeps its shape.
        self.evicted: dict[int, set[int]] = {}
        # This step's activity, for its record (begin_step starts it afresh).
        self.new_blocks = 0  # handed out fresh (not shared, not revived)
        self.freed_now: dict[int, tuple[int, ...]] = {}  # request id -> blocks it gave back
        self.evicted_now: dict[int, list[int]] = {}  # request id -> blocks given back early
        self._changed: dict[int, None] = {}  # requests whose table changed since take_changes (in order)

    def begin_step(self) -> None:
        self.new_blocks = 0
        self.freed_now = {}
        self.evicted_now = {}
        if self.prefix is not None:
            self.prefix.begin_step()

    def take_changes(self) -> dict[int, tuple[int, ...]]:
        """The tables that changed since the last call, as they are now (requests that let go of
        their blocks are left out: the plan says who was released)."""
        changed, self._changed = self._changed, {}
        tables = self.tables
        return {rid: tables[rid] for rid in changed if rid in tables}

    def _set_table(self, request_id: int, table: tuple[int, ...]) -> None:
        self.tables[request_id] = table
        self._changed[request_id] = None

    # -- sizes ------------------------------------------------------------------------------------
    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, request_id: int, num_tokens: int) -> int:
        return max(0, self.blocks_for(num_tokens) - len(self.tables.get(request_id, ())))

    @property
    def num_free(self) -> int:
        """Blocks a request may take: free ones and cached-free ones (evicted on demand)."""
        prefix = self.prefix
        return len(self.free_blocks) + (len(prefix.evictable) if prefix is not None else 0)

    def capacity(self, request_id: int) -> int:
        """Tokens the request's blocks can hold."""
        return len(self.tables.get(request_id, ())) * self.block_size

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        return self.blocks_needed(request_id, num_tokens) <= self.num_free

    def shortfall(self, request_id: int, num_tokens: int, hit: PrefixHit = NO_HIT) -> tuple[int, int]:
        """(blocks the request still needs to hold num_tokens, blocks free): what a preemption is for.
        With a prefix hit, the shared blocks cost nothing but the cached-free ones it revives do."""
        if hit.blocks:
            return self.blocks_for(num_tokens) - len(hit.blocks) + hit.revived, self.num_free
        return self.blocks_needed(request_id, num_tokens), self.num_free

    # -- admission ----------------------------------------------------------------------------
    def match_prefix(self, request) -> PrefixHit:
        """Leading blocks of the request's tokens that are cached already (none without prefix caching)."""
        return NO_HIT if self.prefix is None else self.prefix.match(request)

    def run_tokens(self, request) -> int:
        """Tokens the request reserves in one contiguous run at admission; 0: paged on demand."""
        return self.contiguous_up_to and run_tokens(len(request.prompt), request.max_new_tokens, self.contiguous_up_to)

    def can_admit(self, request, hit: PrefixHit, num_tokens: int) -> bool:
        """Room for a new request that shares `hit` and grows to num_tokens: only blocks it really
        takes count (new ones, and cached-free ones it revives; blocks others hold are free to share)."""
        if run := self.run_tokens(request):
            return self.has_run(run)
        if hit.blocks:
            return self.blocks_for(num_tokens) - len(hit.blocks) + hit.revived <= self.num_free
        return self.can_allocate(request.id, num_tokens)

    def admission_shortfall(self, request, num_tokens: int, hit: PrefixHit = NO_HIT) -> tuple[int, int, int | None]:
        """(blocks needed, blocks free, longest free run or None): why the request cannot be admitted.
        A request that wants a run needs its whole length in a row; the others, their first chunk."""
        if run := self.run_tokens(request):
            return self.blocks_for(run), self.num_free, self.longest_run()
        return (*self.shortfall(request.id, num_tokens, hit), None)

    def admit(self, request, hit: PrefixHit) -> None:
        """A new request starts holding its run, or the hit's shared blocks (or nothing yet)."""
        if run := self.run_tokens(request):
            self.reserve_run(request.id, run)
            return
        if self.prefix is None:
            return
        self.prefix.admitted(request, hit)
        if hit.blocks:
            self._share(request.id, hit)

    def _share(self, request_id: int, hit: PrefixHit) -> None:
        assert request_id not in self.tables, f"request {request_id} already holds blocks"
        prefix, refs = self.prefix, self.ref_counts
        assert prefix is not None
        for block in hit.blocks:
            if refs[block] == 0:
                prefix.revive(block)
            refs[block] += 1
            if refs[block] > 1:
                self.shared[block] = refs[block]
        self._set_table(request_id, hit.blocks)

    def reserve_run(self, request_id: int, num_tokens: int) -> tuple[int, ...]:
        """Gives a new request the lowest run of consecutive free blocks that holds num_tokens, its
        whole table from now on; returns it (MemoryError when no run is that long)."""
        assert request_id not in self.tables, f"request {request_id} already holds blocks"
        needed = self.blocks_for(num_tokens)
        start = first_run(sorted(self.free_blocks), needed)
        if start is None:
            raise MemoryError(f"request {request_id} needs {needed} blocks in a row; the longest free run is "
                              f"{self.longest_run()}")
        self.free_blocks = deque(b for b in self.free_blocks if not start <= b < start + needed)
        run = tuple(range(start, start + needed))
        for block in run:
            self.ref_counts[block] = 1
        self.new_blocks += needed
        self._set_table(request_id, run)
        self.runs.add(request_id)
        return run

    def has_run(self, num_tokens: int) -> bool:
        return first_run(sorted(self.free_blocks), self.blocks_for(num_tokens)) is not None

    def longest_run(self) -> int:
        """The most consecutive free blocks: less than the free count when the pool is fragmented."""
        return longest_run(sorted(self.free_blocks))

    def preemptible(self, request_id: int) -> bool:
        """Whether the request may be preempted for another: a reserved run is kept to the end (its promise)."""
        return request_id not in self.runs

    # -- growing and shrinking ------------------------------------------------------------------
    def allocate(self, request_id: int, num_tokens: int) -> list[int]:
        """Grows the request's table to hold num_tokens; returns the new blocks."""
        needed = self.blocks_needed(request_id, num_tokens)
        if needed == 0:
            return []
        if not self.can_allocate(request_id, num_tokens):
            raise MemoryError(f"request {request_id} needs {needed} blocks, {self.num_free} free")
        new = self._take_free(request_id, needed)
        refs = self.ref_counts
        for block in new:
            refs[block] = 1
        self.new_blocks += needed
        self._set_table(request_id, self.tables.get(request_id, ()) + tuple(new))
        return new

    def _take_free(self, request_id: int, needed: int) -> list[int]:
        """`needed` blocks off the free list, then cached-free ones, least recently used first."""
        free = self.free_blocks
        take = min(needed, len(free))
        new = [free.popleft() for _ in range(take)]
        if take < needed:
            assert self.prefix is not None
            new += [self.prefix.evict() for _ in range(needed - take)]
        return new

    def _give_free(self, block: int) -> None:
        self.free_blocks.append(block)

    def free(self, request_id: int) -> tuple[int, ...]:
        """Drops the request's references; returns its table. Blocks others still hold stay theirs;
        named blocks nobody holds stay cached (evictable); the rest go back to the free list."""
        blocks = self.tables.pop(request_id, ())
        self._changed.pop(request_id, None)
        self.runs.discard(request_id)
        if self.prefix is not None:
            self.prefix.forget(request_id)
        gone = self.evicted.pop(request_id, None)
        if gone:  # stand-ins are not the request's to give back twice
            blocks = tuple(b for i, b in enumerate(blocks) if i not in gone)
        self._release(blocks)
        self.freed_now[request_id] = blocks
        return blocks

    def _release(self, blocks: tuple[int, ...]) -> None:
        """One reference fewer to each block (a table let go of them)."""
        prefix, refs = self.prefix, self.ref_counts
        if prefix is None:
            for block in blocks:
                refs[block] = 0
                self._give_free(block)
            return
        shared = self.shared
        for block in blocks:
            refs[block] -= 1
            held = refs[block]
            if held == 0:
                if not prefix.keep(block):
                    self._give_free(block)
            elif held == 1:
                del shared[block]
            else:
                shared[block] = held

    def rollback(self, request_id: int, num_tokens: int) -> tuple[int, ...]:
        """Shrinks the request's table to the blocks num_tokens fill (rejected drafts); returns the
        blocks freed. The last block's tail is simply written again later."""
        table = self.tables.get(request_id, ())
        keep = self.blocks_for(num_tokens)
        if keep >= len(table):
            return ()
        freed = table[keep:]
        self._set_table(request_id, table[:keep])
        self._release(freed)  # blocks of rejected drafts: never named, held by this request alone
        self.freed_now[request_id] = freed
        return freed

    def evict(self, request_id: int, index: int) -> int:
        """Gives back the block at `index` of the request's table before the request ends (its keys
        will never be read again); returns it. The entry then points at the request's newest block."""
        table = self.tables[request_id]
        gone = self.evicted.setdefault(request_id, set())
        if index in gone or index >= len(table) - 1:
            raise ValueError(f"request {request_id}: block {index} of {len(table)} cannot be evicted")
        block, stand_in = table[index], table[-1]
        self._set_table(request_id, table[:index] + (stand_in,) + table[index + 1:])
        gone.add(index)
        self._release((block,))
        self.evicted_now.setdefault(request_id, []).append(block)
        return block

    # -- after a step ---------------------------------------------------------------------------
    def stored(self, held: dict[int, int]) -> None:
        """The step's keys are in the store now (`held`: request id -> tokens stored): blocks that
        prefills filled get their prefix names."""
        if self.prefix is not None:
            self.prefix.name_computed(self.tables, held)
