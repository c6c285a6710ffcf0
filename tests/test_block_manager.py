"""The block manager on its own, no torch: blocks handed out and taken back, prefix sharing and its
reference counts, contiguous runs, early eviction, draft rollback, the changes a plan carries, and
sequence sharding's round-robin variant. Runs where `import torch` fails (test_project.py checks it)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.kv.block_manager import BlockManager
from engine.kv.prefix_cache import PrefixCache, chain_hashes
from engine.kv.round_robin_blocks import RoundRobinBlocks


class FakeRequest:
    def __init__(self, rid: int, tokens: list[int]):
        self.id, self.tokens = rid, tokens

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def token_slice(self, start: int, count: int) -> list[int]:
        return self.tokens[start:start + count]


def guard_eviction(monkeypatch, alloc: BlockManager) -> list[int]:
    """Makes every eviction check that nobody holds the block it takes; returns the evicted blocks."""
    evicted: list[int] = []
    original = PrefixCache.evict

    def evict(self):
        block = original(self)
        assert alloc.ref_counts[block] == 0, f"evicted block {block}, held by {alloc.ref_counts[block]}"
        evicted.append(block)
        return block
    monkeypatch.setattr(PrefixCache, "evict", evict)
    return evicted


def check_pool(alloc: BlockManager) -> None:
    """Every block is exactly one of: held (its reference count = the tables holding it), cached-free
    (named, held by nobody) or free; names and blocks map one to one."""
    holders = Counter(b for table in alloc.tables.values() for b in table)
    assert [alloc.ref_counts[b] for b in range(alloc.num_blocks)] == [holders[b] for b in range(alloc.num_blocks)]
    assert alloc.shared == {b: n for b, n in holders.items() if n > 1}
    free = set(alloc.free_blocks)
    assert len(free) == len(alloc.free_blocks), "a block is on the free list twice"
    prefix = alloc.prefix
    cached = set(prefix.evictable) if prefix is not None else set()
    assert not free & cached and not (free | cached) & set(holders), "a block is both free and referenced"
    assert len(free) + len(cached) + len(holders) == alloc.num_blocks, "a block went missing"
    if prefix is not None:
        assert {prefix.block_of[name] for name in prefix.name_of.values()} == set(prefix.name_of)
        assert len(prefix.block_of) == len(prefix.name_of) and cached <= set(prefix.name_of)
        assert {b for b, flag in enumerate(prefix.cached_map) if flag} == cached  # what records copy


def test_sequence_shards_hold_alternate_blocks_and_admission_asks_every_shard():
    alloc = RoundRobinBlocks(shards=2, blocks_per_shard=3, block_size=4)
    alloc.allocate(8, 12)  # blocks 0, 1, 2 of request 8: shards 0, 1, 0
    assert [alloc.shard_of(b) for b in alloc.tables[8]] == [0, 1, 0]
    assert [len(f) for f in alloc.shard_free] == [1, 2]
    assert alloc.can_allocate(8, 20)  # one more block, on shard 1
    # 4 more blocks: two on each shard, but shard 0 has one left: refused although 3 are free in all
    assert alloc.num_free == 3 and not alloc.can_allocate(8, 28)
    alloc.allocate(9, 4)  # the next request starts one shard further on
    assert [alloc.shard_of(b) for b in alloc.tables[9]] == [1]
    alloc.free(8)
    alloc.free(9)
    assert [len(f) for f in alloc.shard_free] == [3, 3]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_pool_books_balance_under_random_admissions_growth_and_frees(data):
    """The block manager alone (no model): random admissions behind shared prefixes, growth and frees."""
    block_size = data.draw(st.integers(1, 4))
    num_blocks = data.draw(st.integers(4, 16))
    kv = alloc = BlockManager(num_blocks, block_size, prefix_caching=True)
    held: dict[int, int] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        guard_eviction(monkeypatch, alloc)
        live: dict[int, FakeRequest] = {}
        bases = [[b] * 12 for b in range(3)]
        for step in range(data.draw(st.integers(1, 30))):
            action = data.draw(st.sampled_from(["admit", "admit", "grow", "free"]))
            if action == "admit":
                base = data.draw(st.sampled_from(bases))
                r = FakeRequest(step, base[:data.draw(st.integers(0, 12))] + [100 + step])
                hit = kv.match_prefix(r)
                if not kv.can_admit(r, hit, r.num_tokens):
                    continue
                kv.admit(r, hit)
                kv.allocate(r.id, r.num_tokens)
                held[r.id] = r.num_tokens  # as if computed
                kv.stored(held)
                live[r.id] = r
            elif live and action == "grow":
                r = live[data.draw(st.sampled_from(sorted(live)))]
                if kv.can_allocate(r.id, r.num_tokens + block_size):
                    r.tokens += [7] * block_size
                    kv.allocate(r.id, r.num_tokens)
            elif live:
                rid = live.pop(data.draw(st.sampled_from(sorted(live)))).id
                kv.free(rid)
                held.pop(rid)
            check_pool(alloc)
        for rid in list(live):
            kv.free(rid)
        check_pool(alloc)
        assert alloc.num_free == num_blocks and not any(alloc.ref_counts)


def test_chain_hashes_name_a_block_by_everything_before_it():
    a = chain_hashes([1, 2, 3, 4, 5, 6], 2)
    b = chain_hashes([9, 2, 3, 4, 5, 6], 2)
    assert len(a) == 3 and a[0] != b[0] and a[1] != b[1]  # same tokens, another prefix: another name
    assert chain_hashes([1, 2, 3, 4, 5], 2) == a[:2]  # a partial block has no name
    assert chain_hashes([1, 2, -1, 4], 2) == a[:1]  # nor has a block with a token not read back yet


def test_a_reserved_run_is_consecutive_and_goes_back_whole():
    alloc = BlockManager(num_blocks=10, block_size=4)
    alloc.allocate(1, 8)  # blocks 0, 1 (paged)
    run = alloc.reserve_run(2, 13)  # 4 blocks in a row
    assert run == (2, 3, 4, 5) and alloc.tables[2] == run and alloc.runs == {2}
    assert alloc.num_free == 4 and sorted(alloc.free_blocks) == [6, 7, 8, 9]
    assert alloc.blocks_needed(2, 13) == 0  # the whole length is reserved: it never asks again
    assert alloc.free(2) == run
    assert alloc.runs == set() and alloc.num_free == 8


def test_a_fragmented_pool_has_the_blocks_but_not_the_run():
    alloc = BlockManager(num_blocks=8, block_size=4)
    for rid in range(8):
        alloc.allocate(rid, 4)
    for rid in (1, 3, 5, 7):  # every other block free: 4 free, none adjacent
        alloc.free(rid)
    assert alloc.num_free == 4 and alloc.longest_run() == 1
    assert not alloc.has_run(8) and alloc.has_run(4)
    with pytest.raises(MemoryError, match="in a row; the longest free run is 1"):
        alloc.reserve_run(9, 8)


def test_an_evicted_block_goes_back_once():
    allocator = BlockManager(8, 4)
    allocator.allocate(1, 16)  # blocks 0, 1, 2, 3
    assert allocator.evict(1, 1) == 1 and allocator.tables[1] == (0, 3, 2, 3)
    assert allocator.num_free == 5
    with pytest.raises(ValueError, match="cannot be evicted"):
        allocator.evict(1, 1)  # already gone
    with pytest.raises(ValueError, match="cannot be evicted"):
        allocator.evict(1, 3)  # the newest block is the stand-in
    assert sorted(allocator.free(1)) == [0, 2, 3] and allocator.num_free == 8
    assert sorted(allocator.free_blocks) == list(range(8)) and not allocator.evicted


def test_block_manager_hands_out_distinct_blocks_and_takes_them_back():
    alloc = BlockManager(num_blocks=10, block_size=4)
    assert alloc.allocate(1, 9) == [0, 1, 2]  # 9 tokens need 3 blocks
    assert alloc.allocate(1, 12) == []  # still fits in 3
    assert alloc.allocate(2, 5) == [3, 4]
    assert not alloc.can_allocate(3, 4 * 6)
    alloc.free(1)
    assert alloc.num_free == 8 and alloc.can_allocate(3, 4 * 6)
    assert set(alloc.allocate(3, 4 * 6)).isdisjoint(alloc.tables[2])


def test_the_changes_a_plan_carries_are_the_tables_as_they_stand():
    blocks = BlockManager(num_blocks=8, block_size=4)
    blocks.allocate(1, 4)
    blocks.allocate(2, 4)
    blocks.allocate(1, 8)  # grown twice in one window: sent once, as it is now
    assert blocks.take_changes() == {1: (0, 2), 2: (1,)}
    assert blocks.take_changes() == {}  # taken
    blocks.allocate(2, 5)
    blocks.free(2)  # released: the plan says so apart; no table to send
    assert blocks.take_changes() == {}
    blocks.allocate(3, 4)
    blocks.evict(1, 0)  # a stand-in entry is a change too
    assert blocks.take_changes() == {3: (4,), 1: (2, 2)}  # freed blocks queue at the end of the free list


def test_a_rollback_gives_back_the_blocks_past_the_kept_tokens_and_says_so():
    blocks = BlockManager(num_blocks=8, block_size=2)
    blocks.allocate(1, 7)  # 4 blocks
    blocks.take_changes()
    blocks.begin_step()
    assert blocks.rollback(1, 3) == (2, 3) and blocks.tables[1] == (0, 1)
    assert blocks.freed_now == {1: (2, 3)} and blocks.take_changes() == {1: (0, 1)}
    assert blocks.rollback(1, 4) == () and blocks.num_free == 6
    blocks.begin_step()  # a new step's activity starts empty
    assert blocks.freed_now == {} and blocks.new_blocks == 0
