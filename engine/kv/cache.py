"""KV caches: dense (per request, contiguous) and paged (fixed-size blocks in one pool).

Both expose the same step protocol to the model:
  begin_step(request_ids, batch)  -> where this step's keys/values go and which keys it reads
  write(layer, k, v)              -> store this step's keys/values
  read(layer)                     -> packed keys/values [K, kv_heads, head_dim], item after item
"""

from __future__ import annotations

from collections import deque

import torch

from ..batch_builder import RaggedBatch, long_tensor, to_device
from .contiguous_runs import first_run, longest_run, run_tokens
from .prefix_cache import NO_HIT, PrefixCache, PrefixHit


class PagedAllocator:
    """Hands out physical blocks from a fixed pool and keeps each request's block table.

    With prefix caching (prefix_cache.py) a block may sit in several tables: `ref_counts` says in
    how many, and a block leaves the pool's use only when the last of them lets go."""

    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = False):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_blocks: deque[int] = deque(range(num_blocks))  # holding nothing worth keeping
        # Tuples, replaced when they grow: a StepRecord can hold them without copying.
        self.tables: dict[int, tuple[int, ...]] = {}
        self.ref_counts = [0] * num_blocks
        self.shared: dict[int, int] = {}  # block -> reference count, for blocks in two tables or more
        self.prefix = PrefixCache(block_size, num_blocks) if prefix_caching else None
        self.new_blocks = 0  # handed out fresh since the last record (not shared, not revived)
        # Table entries whose block was given back early (evict): request id -> indices. Such an
        # entry keeps a stand-in (a live block of the same request) so the table keeps its shape.
        self.evicted: dict[int, set[int]] = {}
        # Requests whose table is one run of consecutive blocks, reserved at admission for their
        # whole length (contiguous_runs.py says which): they never grow, so they are never short.
        self.runs: set[int] = set()

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, request_id: int, num_tokens: int) -> int:
        return max(0, self.blocks_for(num_tokens) - len(self.tables.get(request_id, ())))

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        return self.blocks_needed(request_id, num_tokens) <= self.num_free

    def can_admit(self, hit: PrefixHit, num_tokens: int) -> bool:
        """Room for a new request that shares `hit` and grows to num_tokens: only blocks it really
        takes count (new ones, and cached-free ones it revives; blocks others hold are free to share)."""
        return self.blocks_for(num_tokens) - len(hit.blocks) + hit.revived <= self.num_free

    def share(self, request_id: int, hit: PrefixHit) -> None:
        """Starts the request's table with the hit's blocks (a new request holds none yet)."""
        assert request_id not in self.tables, f"request {request_id} already holds blocks"
        prefix, refs = self.prefix, self.ref_counts
        assert prefix is not None
        for block in hit.blocks:
            if refs[block] == 0:
                prefix.revive(block)
            refs[block] += 1
            if refs[block] > 1:
                self.shared[block] = refs[block]
        self.tables[request_id] = hit.blocks

    def allocate(self, request_id: int, num_tokens: int) -> list[int]:
        """Grows the request's table to hold num_tokens; returns the new blocks."""
        needed = self.blocks_needed(request_id, num_tokens)
        if needed == 0:
            return []
        free = self.free_blocks
        if needed > len(free):
            if needed > self.num_free:
                raise MemoryError(f"request {request_id} needs {needed} blocks, {self.num_free} free")
            assert self.prefix is not None
            new = [free.popleft() for _ in range(len(free))]
            new += [self.prefix.evict() for _ in range(needed - len(new))]  # least recently used first
        else:
            new = [free.popleft() for _ in range(needed)]
        refs = self.ref_counts
        for block in new:
            refs[block] = 1
        self.new_blocks += needed
        self.tables[request_id] = self.tables.get(request_id, ()) + tuple(new)
        return new

    def reserve_run(self, request_id: int, num_tokens: int) -> tuple[int, ...]:
        """Gives a new request the lowest run of consecutive free blocks that holds num_tokens, its
        whole table from now on; returns it (MemoryError when no run is that long)."""
        assert request_id not in self.tables, f"request {request_id} already holds blocks"
        needed = self.blocks_for(num_tokens)
        start = first_run(sorted(self.free_blocks), needed)
        if start is None:
            raise MemoryError(f"request {request_id} needs {needed} blocks in a row; the longest free run is "
                              f"{self.longest_run()}")
        run = tuple(range(start, start + needed))
        self.free_blocks = deque(b for b in self.free_blocks if not start <= b < start + needed)
        for block in run:
            self.ref_counts[block] = 1
        self.new_blocks += needed
        self.tables[request_id] = run
        self.runs.add(request_id)
        return run

    def has_run(self, num_tokens: int) -> bool:
        return first_run(sorted(self.free_blocks), self.blocks_for(num_tokens)) is not None

    def longest_run(self) -> int:
        """The most consecutive free blocks: less than the free count when the pool is fragmented."""
        return longest_run(sorted(self.free_blocks))

    def free(self, request_id: int) -> tuple[int, ...]:
        """Drops the request's references; returns its table. Blocks others still hold stay theirs;
        named blocks nobody holds stay cached (evictable); the rest go back to the free list."""
        blocks = self.tables.pop(request_id, ())
        self.runs.discard(request_id)
        if self.prefix is not None:
            self.prefix.forget(request_id)
        gone = self.evicted.pop(request_id, None)
        if gone:  # stand-ins are not the request's to give back twice
            blocks = tuple(b for i, b in enumerate(blocks) if i not in gone)
        self._release(blocks)
        return blocks

    def _release(self, blocks: tuple[int, ...]) -> None:
        """One reference fewer to each block (a table let go of them)."""
        prefix, refs = self.prefix, self.ref_counts
        if prefix is None:
            self.free_blocks.extend(blocks)
            for block in blocks:
                refs[block] = 0
            return
        shared = self.shared
        for block in blocks:
            refs[block] -= 1
            held = refs[block]
            if held == 0:
                if not prefix.keep(block):
                    self.free_blocks.append(block)
            elif held == 1:
                del shared[block]
            else:
                shared[block] = held

    def truncate(self, request_id: int, num_tokens: int) -> tuple[int, ...]:
        """Shrinks the request's table to the blocks num_tokens fill; returns the blocks freed."""
        table = self.tables.get(request_id, ())
        keep = self.blocks_for(num_tokens)
        if keep >= len(table):
            return ()
        self.tables[request_id], freed = table[:keep], table[keep:]
        self._release(freed)  # blocks of rejected drafts: never named, held by this request alone
        return freed

    def evict(self, request_id: int, index: int) -> int:
        """Gives back the block at `index` of the request's table before the request ends (its keys
        will never be read again); returns it. The entry then points at the request's newest block."""
        table = self.tables[request_id]
        gone = self.evicted.setdefault(request_id, set())
        if index in gone or index >= len(table) - 1:
            raise ValueError(f"request {request_id}: block {index} of {len(table)} cannot be evicted")
        block, stand_in = table[index], table[-1]
        self.tables[request_id] = table[:index] + (stand_in,) + table[index + 1:]
        gone.add(index)
        self._release((block,))
        return block

    @property
    def num_free(self) -> int:
        """Blocks a request may take: free ones and cached-free ones (evicted on demand)."""
        prefix = self.prefix
        return len(self.free_blocks) + (len(prefix.evictable) if prefix is not None else 0)

    def flatten(self, pool, request_id: int, num_tokens: int):
        """A request's history as one contiguous tensor: its blocks of `pool` ([blocks * block_size,
        ...], one layer's keys or values) concatenated in table order, the unused tail of the last
        block trimmed to `num_tokens`. The seed's view of paged KV for attention; the reference
        backend reads keys this way (the fast paths gather slots, or read the pool in a kernel)."""
        table = self.tables.get(request_id, ())
        offsets = torch.arange(self.block_size, device=pool.device)
        blocks = torch.tensor(table, dtype=torch.long, device=offsets.device)
        slots = (blocks[:, None] * self.block_size + offsets[None, :]).reshape(-1)[:num_tokens]
        return pool[slots]


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token across all layers."""
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class _CacheBase:
    layout = ""
    step_request_ids: list[int]  # set by begin_step
    step_batch: RaggedBatch

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.tokens: dict[int, int] = {}  # request id -> tokens whose K/V are stored
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)

    def commit_step(self) -> None:
        """Marks this step's tokens as stored (called after the forward pass)."""
        self.tokens.update(zip(self.step_request_ids, self.step_batch.k_lens, strict=True))

    def match_prefix(self, request) -> PrefixHit:
        """Leading blocks of the request's tokens that are cached already (none without prefix caching)."""
        return NO_HIT

    def admit(self, request, hit: PrefixHit) -> None:
        """A new request starts holding the hit's blocks, its tokens counted as stored."""

    def preemptible(self, request_id: int) -> bool:
        """Whether the request may be preempted to make room for another (a reserved run may not)."""
        return True


class PagedKVCache(_CacheBase):
    layout = "paged"

    def __init__(self, num_layers, num_kv_heads, head_dim, dtype, device, num_blocks: int, block_size: int,
                 max_context: int, spare_block: bool = False, prefix_caching: bool = False,
                 memory_budget: int | None = None, contiguous_up_to: int = 0):
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, device)
        self.allocator = PagedAllocator(num_blocks, block_size, prefix_caching)
        self.contiguous_up_to = contiguous_up_to  # requests this long or shorter get a run (contiguous_runs.py)
        self.prefix = self.allocator.prefix
        self.block_size = block_size
        self.memory_budget = memory_budget  # kv_memory_bytes: the pool was sized from it, not from a count
        self.evicted_now: dict[int, list[int]] = {}  # this step's evictions: request id -> blocks
        # The teaching path: read each request's keys as PagedAllocator.flatten gives them (set for
        # the reference backend) rather than by one gather of pool slots. Same keys either way.
        self.read_by_flatten = False
        self.spare_block = spare_block
        # Host mirror of the block tables, one row per live request, updated as blocks are handed
        # out, so a step copies its rows in one go instead of rebuilding them from lists.
        self._table = torch.zeros((64, self.allocator.blocks_for(max_context)), dtype=torch.long)
        self._table_np = self._table.numpy()  # same memory; numpy writes single entries ~20x faster
        self._row: dict[int, int] = {}
        self._free_rows: list[int] = list(range(63, -1, -1))
        # With decode graphs, one spare block past the allocator's: padding rows write there.
        self.scratch_slot = num_blocks * block_size if spare_block else None
        shape = (num_layers, (num_blocks + spare_block) * block_size, num_kv_heads, head_dim)
        self.k_pool = torch.zeros(shape, dtype=dtype, device=device)
        self.v_pool = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def pool_bytes(self) -> int:
        return self.k_pool.nbytes + self.v_pool.nbytes  # what the pools really take (int8 or float)

    def replace_pools(self, k_pool, v_pool, num_blocks: int) -> None:
        """New storage with room for `num_blocks` blocks (plus the spare one, if any), before anything
        is stored: a compressed pool fits more blocks in the same memory budget."""
        if self.allocator.tables:
            raise RuntimeError("the KV pool can only be replaced before any request holds blocks")
        self.allocator = PagedAllocator(num_blocks, self.block_size, self.prefix is not None)
        self.prefix = self.allocator.prefix
        self.scratch_slot = num_blocks * self.block_size if self.spare_block else None
        self.k_pool, self.v_pool = k_pool, v_pool

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        return self.allocator.can_allocate(request_id, num_tokens)

    def shortfall(self, request_id: int, num_tokens: int, hit: PrefixHit = NO_HIT) -> tuple[int, int]:
        """(blocks the request still needs to hold num_tokens, blocks free): what a preemption is for.
        With a prefix hit, the shared blocks cost nothing but the cached-free ones it revives do."""
        allocator = self.allocator
        if hit.blocks:
            return allocator.blocks_for(num_tokens) - len(hit.blocks) + hit.revived, allocator.num_free
        return allocator.blocks_needed(request_id, num_tokens), allocator.num_free

    @property
    def max_table_width(self) -> int:
        return self._table.shape[1]

    def capacity(self, request_id: int) -> int:
        return len(self.allocator.tables.get(request_id, ())) * self.block_size

    def commit_step(self) -> None:
        super().commit_step()
        if self.prefix is not None:  # blocks that prefills filled get their names now their keys are in
            self.prefix.name_computed(self.allocator.tables, self.tokens)

    def match_prefix(self, request) -> PrefixHit:
        return NO_HIT if self.prefix is None else self.prefix.match(request)

    def run_tokens(self, request) -> int:
        """Tokens the request reserves in one contiguous run at admission; 0: paged on demand."""
        return self.contiguous_up_to and run_tokens(len(request.prompt), request.max_new_tokens, self.contiguous_up_to)

    def can_admit(self, request, hit: PrefixHit, num_tokens: int) -> bool:
        if run := self.run_tokens(request):
            return self.allocator.has_run(run)
        return self.allocator.can_admit(hit, num_tokens) if hit.blocks else self.can_allocate(request.id, num_tokens)

    def admission_shortfall(self, request, num_tokens: int, hit: PrefixHit = NO_HIT) -> tuple[int, int, int | None]:
        """(blocks needed, blocks free, longest free run or None): why the request cannot be admitted.
        A request that wants a run needs its whole length in a row; the others, their first chunk."""
        if run := self.run_tokens(request):
            return self.allocator.blocks_for(run), self.allocator.num_free, self.allocator.longest_run()
        return (*self.shortfall(request.id, num_tokens, hit), None)

    def preemptible(self, request_id: int) -> bool:
        return request_id not in self.allocator.runs  # a reserved run is kept to the end: that is its promise

    def admit(self, request, hit: PrefixHit) -> None:
        if run := self.run_tokens(request):
            self._put_in_row(request.id, list(self.allocator.reserve_run(request.id, run)))
            return
        if self.prefix is None:
            return
        self.prefix.admitted(request, hit)
        if hit.blocks:
            self.allocator.share(request.id, hit)
            self._put_in_row(request.id, list(hit.blocks))
            self.tokens[request.id] = hit.tokens

    def allocate(self, request_id: int, num_tokens: int) -> None:
        new = self.allocator.allocate(request_id, num_tokens)
        if new:
            self._put_in_row(request_id, new)

    def _row_of(self, request_id: int) -> int:
        """The request's row of the host table mirror, given one (the mirror doubles when full)."""
        if request_id not in self._row:
            if not self._free_rows:
                grown = self._table.shape[0]
                self._table = torch.cat([self._table, torch.zeros_like(self._table)])
                self._table_np = self._table.numpy()
                self._free_rows = list(range(2 * grown - 1, grown - 1, -1))
            self._row[request_id] = self._free_rows.pop()
        return self._row[request_id]

    def _put_in_row(self, request_id: int, new: list[int]) -> None:
        """Mirrors blocks just added to the end of the request's table into its host row."""
        row = self._row_of(request_id)
        table = self.allocator.tables[request_id]
        self._table_np[row, len(table) - len(new):len(table)] = new

    def evict(self, request_id: int, index: int) -> int:
        """A block of a live request given back early (a cache plugin's eviction policy): the block
        at `index` of its table, whose keys no query will read again. Returns the block."""
        block = self.allocator.evict(request_id, index)
        self._table_np[self._row[request_id], index] = self.allocator.tables[request_id][index]
        self.evicted_now.setdefault(request_id, []).append(block)
        return block

    def free(self, request_id: int) -> tuple[int, ...]:
        """Returns the blocks the request gave back."""
        blocks = self.allocator.free(request_id)
        self.tokens.pop(request_id, None)
        if request_id in self._row:
            self._free_rows.append(self._row.pop(request_id))
        return blocks

    def rollback(self, request_id: int, num_tokens: int) -> tuple[int, ...]:
        """Forgets the request's keys and values from position num_tokens on (rejected drafts): the
        blocks left empty go back to the pool (returned); the last block's tail is written again."""
        self.tokens[request_id] = min(self.tokens.get(request_id, 0), num_tokens)
        return self.allocator.truncate(request_id, num_tokens)

    def _slots(self, tables: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Pool slot of each (item, position): its block from the table, then the offset in it.

        A 1-D gather on flattened tables, and shifts for a power-of-two block size: 64-bit
        division and 2-D fancy indexing were most of a step's host time (measured: 1.45 ms vs
        0.26 ms for 512 requests, 26k keys, on this project's 2-core CPU).
        """
        bs, width = self.block_size, tables.shape[1]
        if bs & (bs - 1) == 0:
            shift = bs.bit_length() - 1
            block_index, offset = pos >> shift, pos & (bs - 1)
        else:
            block_index, offset = torch.div(pos, bs, rounding_mode="floor"), pos.remainder(bs)
        return (tables * bs).view(-1)[seq * width + block_index] + offset

    def begin_step(self, request_ids: list[int], batch: RaggedBatch) -> None:
        self.step_request_ids, self.step_batch = request_ids, batch
        self.evicted_now = {}
        tables_by_id, row_of = self.allocator.tables, self._row
        width = max(map(len, map(tables_by_id.__getitem__, request_ids)))
        rows = long_tensor(list(map(row_of.__getitem__, request_ids)), torch.device("cpu"))
        self.step_tables = to_device(self._table[rows, :width], self.device)  # [items, blocks] this step
        self.step_write_slots = self._slots(self.step_tables, batch.seq_ids, batch.positions)
        self._read_slots: dict[int, torch.Tensor] = {}  # first item -> pool slots of its keys onward

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.write_at(layer, self.step_write_slots, k, v)

    def write_at(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_pool[layer].index_copy_(0, slots, k)
        self.v_pool[layer].index_copy_(0, slots, v)

    def read(self, layer: int, first_item: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed keys/values of the step's items from `first_item` on (all of them by default)."""
        if self.read_by_flatten and first_item == 0:
            return self._read_flattened(layer)
        slots = self._read_slots.get(first_item)
        if slots is None:
            batch, k0 = self.step_batch, sum(self.step_batch.k_lens[:first_item])
            slots = self._slots(self.step_tables, batch.key_seq_ids[k0:], batch.key_positions[k0:])
            self._read_slots[first_item] = slots
        return self.k_pool[layer].index_select(0, slots), self.v_pool[layer].index_select(0, slots)

    def flatten(self, layer: int, request_id: int, num_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A request's cached K/V (PagedAllocator.flatten): its blocks in order, the unused tail trimmed;
        `num_tokens` defaults to the tokens committed so far."""
        n = self.tokens.get(request_id, 0) if num_tokens is None else num_tokens
        flatten = self.allocator.flatten
        return flatten(self.k_pool[layer], request_id, n), flatten(self.v_pool[layer], request_id, n)

    def _read_flattened(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's keys/values, item after item, each request's history flattened (this step's
        keys included: they are stored before attention reads)."""
        parts = [self.flatten(layer, rid, n) for rid, n in zip(self.step_request_ids, self.step_batch.k_lens,
                                                                strict=True)]
        return torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])


class DenseKVCache(_CacheBase):
    """Each request owns contiguous K/V tensors per layer, grown by concatenation."""

    layout = "dense"

    def __init__(self, num_layers, num_kv_heads, head_dim, dtype, device):
        super().__init__(num_layers, num_kv_heads, head_dim, dtype, device)
        self.store: dict[int, list[list[torch.Tensor]]] = {}  # rid -> [layer] -> [k, v]

    @property
    def pool_bytes(self) -> int:
        return sum(self.tokens.values()) * self.bytes_per_token

    def can_allocate(self, request_id: int, num_tokens: int) -> bool:
        return True  # dense storage grows on demand; it never preempts

    def shortfall(self, request_id: int, num_tokens: int, hit: PrefixHit = NO_HIT) -> tuple[int, int]:
        return 0, 0  # never short

    def can_admit(self, request, hit: PrefixHit, num_tokens: int) -> bool:
        return True

    def admission_shortfall(self, request, num_tokens: int, hit: PrefixHit = NO_HIT) -> tuple[int, int, int | None]:
        return 0, 0, None  # never short

    def allocate(self, request_id: int, num_tokens: int) -> None:
        pass

    def capacity(self, request_id: int) -> int:
        return 1 << 62  # unbounded

    def free(self, request_id: int) -> tuple[int, ...]:
        self.store.pop(request_id, None)
        self.tokens.pop(request_id, None)
        return ()  # no blocks in a dense cache

    def rollback(self, request_id: int, num_tokens: int) -> tuple[int, ...]:
        """Cuts the request's keys and values to its first num_tokens positions (rejected drafts)."""
        if request_id in self.store:
            self.store[request_id] = [[k[:num_tokens], v[:num_tokens]] for k, v in self.store[request_id]]
            self.tokens[request_id] = min(self.tokens.get(request_id, 0), num_tokens)
        return ()

    def begin_step(self, request_ids: list[int], batch: RaggedBatch) -> None:
        self.step_request_ids, self.step_batch = request_ids, batch
        for rid, item in zip(request_ids, batch.items, strict=True):
            held = self.tokens.get(rid, 0)
            assert held == item.first_pos, \
                f"dense cache for request {rid} holds {held}, step starts at {item.first_pos}"
            if rid not in self.store:
                empty = torch.empty((0, self.num_kv_heads, self.head_dim), dtype=self.dtype, device=self.device)
                self.store[rid] = [[empty, empty] for _ in range(self.num_layers)]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        q_lens = self.step_batch.q_lens
        for rid, k_new, v_new in zip(self.step_request_ids, k.split(q_lens), v.split(q_lens), strict=True):
            entry = self.store[rid][layer]
            entry[0] = torch.cat([entry[0], k_new])
            entry[1] = torch.cat([entry[1], v_new])

    def read(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        ks = [self.store[rid][layer][0] for rid in self.step_request_ids]
        vs = [self.store[rid][layer][1] for rid in self.step_request_ids]
        return torch.cat(ks), torch.cat(vs)

    def flatten(self, layer: int, request_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.store[request_id][layer]
        return k, v
