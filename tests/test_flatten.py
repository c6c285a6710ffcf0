"""Flatten (the seed's PagedAllocator.flatten; here the paged store's): blocks in table order, tail
trimmed; the reference backend reads histories through it; the KV panel shows the selected request's
flattened history."""

import torch
from helpers import exact_config
from rich.console import Console

from cbtui.render.colors import FULL
from cbtui.widgets.kv_grid import paged_text
from engine import Engine
from engine.kv.block_manager import BlockManager
from engine.kv.paged_store import PagedKVStore
from engine.records.kv_history import flat_history
from engine.records.types import KVView


def test_flatten_concatenates_blocks_in_table_order_and_trims_the_tail():
    allocator = BlockManager(num_blocks=6, block_size=4)
    allocator.allocate(0, 4)  # block 0 goes to someone else first
    allocator.allocate(1, 6)  # blocks 1, 2
    allocator.free(0)
    allocator.allocate(1, 11)  # then 3 (the free list hands out 3 before the freed 0)
    assert allocator.tables[1] == (1, 2, 3)
    store = PagedKVStore(1, 1, 2, torch.float32, torch.device("cpu"), num_blocks=6, block_size=4, max_context=24)
    store.apply([0], allocator.take_changes())  # the store learns the tables from the plan's changes
    store.k_pool[0] = torch.arange(6 * 4 * 2, dtype=torch.float32).reshape(24, 1, 2)  # slot s holds [2s, 2s + 1]
    flat, _ = store.flatten(0, 1, 11)
    flat = flat[:, 0]
    slots = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]  # blocks 1, 2 whole, 3 cut after 3 of its 4 slots
    assert flat.tolist() == [[2 * s, 2 * s + 1] for s in slots]


def test_the_reference_backend_reads_by_flatten_and_the_fast_one_does_not():
    def run(attention):
        engine = Engine(exact_config(attention=attention, block_size=4, num_blocks=32, max_tokens_per_step=16,
                                     prefill_chunk_size=8))
        calls = []
        original = engine.runner.kv.flatten

        def counting(layer, rid, n):
            calls.append((rid, n))
            return original(layer, rid, n)

        engine.runner.kv.flatten = counting
        for i in range(3):
            engine.add_request([i + 1] * (9 + 4 * i), max_new_tokens=5)
        return engine.run_until_done(), calls

    reference, flattened = run("reference")
    fast, gathered = run("sdpa")
    assert reference == fast and gathered == []
    # Every layer reads every item's whole history: keys and values, 2 layers.
    assert flattened and all(n >= 1 for _, n in flattened) and {rid for rid, _ in flattened} == {0, 1, 2}


def kv_view(tables, tokens, evicted=None):
    return KVView("paged", 4, 16, 5, 11, {str(k): v for k, v in tables.items()},
                  {str(k): v for k, v in tokens.items()}, [], 1024, 65536,
                  evicted={str(k): v for k, v in (evicted or {}).items()})


def test_a_record_says_what_flatten_reads():
    kv = kv_view({3: (7, 2, 9), 4: (1, 0)}, {3: 10, 4: 8}, evicted={3: (0,)})
    history = flat_history(kv, 3)
    assert (history.blocks, history.tokens, history.trimmed, history.evicted) == ((7, 2, 9), 10, 2, (0,))
    assert history.describe() == "r3 flattened × 2 9 → 10 tok, 2 trimmed"
    assert flat_history(kv, 5) is None
    long = flat_history(kv_view({1: tuple(range(12))}, {1: 45}), 1)
    assert long.describe(max_blocks=5) == "r1 flattened 0 1 … 10 11 → 45 tok, 3 trimmed"


def test_the_kv_panel_shows_the_selected_request_flattened():
    kv = kv_view({3: (7, 2, 9), 4: (1, 0)}, {3: 10, 4: 8})
    console = Console(width=60, record=True, color_system=None)
    console.print(paged_text(kv, 60, 6, selected=3, mode=FULL))
    lines = console.export_text().splitlines()
    assert lines[1].startswith("r3 flattened 7 2 9 → 10 tok, 2 trimmed")
    console = Console(width=60, record=True, color_system=None)
    console.print(paged_text(kv, 60, 6, selected=None, mode=FULL))
    assert "flattened" not in console.export_text()


def test_the_grid_does_not_draw_an_evicted_entry_s_stand_in():
    from cbtui.widgets.kv_grid import block_cells

    # Request 3's entry 0 was evicted; its stand-in, block 5, has since gone to request 4 (a rolled
    # back draft block, say). The grid draws block 5 as request 4's, and the evicted block as free.
    kv = kv_view({4: (5,), 3: (5, 2, 9)}, {4: 3, 3: 10}, evicted={3: (0,)})
    cells = block_cells(kv)
    assert cells[5].owner == 4 and cells[5].fill == 0.75 and cells[9].owner == 3 and cells[9].fill == 0.5


def test_tables_of_more_requests_than_the_first_mirror_holds_land_in_the_grown_one():
    """The 65th request's table: the host mirror (64 rows at first) doubles while its row is given;
    the table is written into the new mirror, not the old one (an IndexError before)."""
    store = PagedKVStore(1, 1, 2, torch.float32, torch.device("cpu"), num_blocks=200, block_size=4, max_context=8)
    tables = {rid: (rid, rid + 100) if rid < 100 else (rid,) for rid in range(65)}
    store.apply([], tables)
    rows = [store._row[rid] for rid in range(65)]
    assert store._table.shape[0] == 128
    assert [store._table[row, :2].tolist() for row in rows] == [[rid, rid + 100] for rid in range(65)]
