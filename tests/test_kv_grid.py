"""The KV grid marks freed blocks from the record alone (no previous record needed)."""

from cbtui.render.colors import FULL
from cbtui.widgets.kv_grid import block_cells
from engine import Engine, EngineConfig


def test_freed_blocks_are_marked_even_on_the_first_record():
    eng = Engine(EngineConfig(model="tiny", device="cpu", block_size=4, num_blocks=8))
    done = eng.add_request([1] * 6, max_new_tokens=1)
    live = eng.add_request([2] * 5, max_new_tokens=4)
    cells = block_cells(eng.step().kv)
    assert [c.freed_by for c in cells[:2]] == [done, done] and cells[0].owner is None
    assert cells[2].owner == live and cells[3].owner == live and 0 < cells[3].fill < 1  # 5 of 8 slots
    assert all(c.owner is None and c.freed_by is None for c in cells[4:])


def test_a_sharded_record_draws_one_pool_per_shard_a_request_in_its_colour_on_each():
    from rich.style import Style

    from cbtui.render.colors import request_color
    from cbtui.widgets.kv_grid import sharded_text
    from engine.records import KVView, ShardView

    # by sequence: request 3's blocks alternate between shard 0 (blocks 0-3) and shard 1 (4-7)
    kv = KVView("paged", 4, 8, 4, 4, {"3": (0, 4, 1, 5)}, {"3": 14}, [], 64, 512)
    shards = [ShardView(r, "cpu", 4, 2, 2, 256, 1 << 20, 4 * r, {"3": (0, 1)}) for r in range(2)]
    text = sharded_text(kv, shards, width=12, rows=6, selected=None, mode=FULL)
    lines = text.plain.split("\n")
    assert lines[0].startswith("shard 0 cpu 2/4 used") and lines[2].startswith("shard 1 cpu 2/4 used")
    colour = Style(color=request_color(3).hex)
    owned = [text.plain[s.start:s.end] for s in text.spans if Style.parse(str(s.style)).color == colour.color]
    assert len(owned) == 2  # one run of its blocks in each shard's grid
    assert lines[1].split() == ["██", "██", "··", "··"]  # logical blocks 0 and 2 (full)
    assert lines[3].split() == ["██", "▄▄", "··", "··"]  # logical blocks 1 (full) and 3 (2 of 4 tokens)


def test_a_short_panel_still_shows_every_shard_a_line_each():
    """At 80x24 the KV panel has about three rows: each shard keeps a line, its name then its grid."""
    from cbtui.widgets.kv_grid import sharded_text
    from engine.records import KVView, ShardView

    kv = KVView("paged", 4, 8, 4, 4, {"3": (0, 4, 1, 5)}, {"3": 14}, [], 64, 512)
    shards = [ShardView(r, "cpu", 4, 2, 2, 256, 1 << 20, 4 * r, {"3": (0, 1)}) for r in range(2)]
    lines = sharded_text(kv, shards, width=20, rows=3, selected=None, mode=FULL).plain.split("\n")
    assert [line[:3] for line in lines] == ["s0 ", "s1 "] and all(len(line) <= 20 for line in lines)


def test_the_summary_leaves_the_grid_a_row_in_a_short_panel():
    """At 80x24 the KV panel has three rows: however much the summary has to say (cells merged, blocks
    freed, prefix counts), the grid keeps its row; the prefix counts shorten to their glyphs."""
    from cbtui.widgets.kv_grid import FREE_GLYPH, paged_text
    from engine.records import KVView, PrefixView
    from engine.records.prefix_view import BlockSet

    tables = {str(r): tuple(range(3 * r, 3 * r + 3)) for r in range(8)}
    prefix = PrefixView(shared={}, cached=BlockSet.of([40, 41], 96), hits={}, hit_blocks=0, hit_tokens=0,
                        lookup_blocks=0, lookup_tokens=0, new_blocks=0, evicted_blocks=0)
    kv = KVView("paged", 8, 96, 24, 72, tables, {r: 24 for r in tables}, [9], 64, 4096,
                freed_blocks={"9": (30, 31, 32, 33)}, prefix=prefix)
    lines = paged_text(kv, 38, 2, None, FULL).plain.split("\n")
    assert len(lines) == 3 and FREE_GLYPH in lines[-1]  # two summary lines, then the grid
    assert "②0 ○2" in lines[1]
    roomy = paged_text(kv, 38, 8, None, FULL).plain
    assert "shared 0" in roomy and "cached-free 2" in roomy


def test_a_small_panel_shortens_the_key_rather_than_drop_it():
    """80x24 (38 columns, 2 rows), no colour, a pool merged into cells and a block freed: the cell
    size, the freed request and the glyph key all stay, in their short forms."""
    from cbtui.render.colors import NONE
    from cbtui.widgets.kv_grid import paged_text
    from scenarios import load_scenario

    engine = load_scenario("mixed_load").build_engine(None, num_blocks=400)
    record = next(r for r in iter(engine.step, None) if r.kv.freed)
    lines = paged_text(record.kv, width=38, rows=2, selected=None, mode=NONE).plain.splitlines()
    assert len(lines) == 3 and all(len(line) <= 38 for line in lines[:2])
    (rid,) = record.kv.freed
    blocks = len(record.kv.freed_blocks[str(rid)])
    assert "/cell" in lines[1] and f"× r{rid} freed {blocks}" in lines[1] and "glyph=id" in lines[1]
    # With room to spare, the long forms.
    roomy = paged_text(record.kv, width=60, rows=4, selected=None, mode=NONE).plain
    assert "1 cell = " in roomy and "glyph = request id" in roomy


def test_the_help_screen_explains_every_mark_the_kv_grid_draws():
    from cbtui.widgets.help_screen import READING
    from cbtui.widgets.kv_grid import CACHED_GLYPH, COUNT_GLYPHS, FREE_GLYPH, FREED_GLYPH, RESERVED_GLYPH

    for glyph in (FREE_GLYPH, FREED_GLYPH, CACHED_GLYPH, RESERVED_GLYPH, COUNT_GLYPHS[1]):
        assert f"{glyph} " in READING, glyph


def test_the_freed_line_says_whose_blocks_and_how_many():
    """layout_by_length said 'used 30/32  free 2  × freed: 32': 32 is request 32, who freed 2 blocks;
    mixed_load step 18's event line said '8 blocks freed' and the panel '× freed: 3'."""
    from cbtui.widgets.kv_grid import dense_text, paged_text
    from engine.records import KVView

    tables = {"5": (0, 1, 2, 3)}
    kv = KVView("paged", 8, 32, 30, 2, tables, {"5": 32}, [32], 64, 4096, freed_blocks={"32": (30, 31)})
    roomy = paged_text(kv, 60, 6, None, FULL).plain
    assert "× request 32 freed 2 blocks" in roomy and "freed: 32" not in roomy
    both = KVView("paged", 8, 32, 19, 13, tables, {"5": 32}, [3, 4], 64, 4096,
                  freed_blocks={"3": tuple(range(8, 16)), "4": (20, 21, 22)})
    assert "× requests 3, 4 freed 11 blocks" in paged_text(both, 60, 6, None, FULL).plain
    narrow = paged_text(both, 20, 3, None, FULL).plain
    assert "× r3, r4 freed 11" in narrow
    dense = KVView("dense", 0, 0, 0, 0, {}, {"5": 32}, [3], 64, 0)
    assert "× K/V freed by request 3" in dense_text(dense, 60, 6, None)


def test_the_sharded_view_says_pool_and_what_the_shards_sent():
    """'shard 0 cpu 3/16 used 96.0 KiB' read as 96 KiB used: it is the pool's size. Lesson 12 asks about
    the bytes the shards send each other: the records carry them (comm), the panel now shows them."""
    from cbtui.widgets.kv_grid import sharded_text
    from cbtui.widgets.memory_panel import step_memory_text
    from engine.records import CommView, KVView, MemoryView, ShardView

    kv = KVView("paged", 4, 8, 4, 4, {"3": (0, 4, 1, 5)}, {"3": 14}, [], 64, 512)
    shards = [ShardView(r, "cpu", 4, 2, 2, 98304, 1 << 20, 4 * r, {"3": (0, 1)}) for r in range(2)]
    comm = CommView(bytes=52648, seconds=0.0095, collectives=4)
    lines = sharded_text(kv, shards, width=60, rows=8, selected=None, mode=FULL, comm=comm).plain.split("\n")
    assert lines[0] == "shard 0 cpu 2/4 used  pool 96.0 KiB"
    assert "⇄ shards sent 51.4 KiB in 4 collectives, 9.5 ms" in lines
    short = sharded_text(kv, shards, width=20, rows=3, selected=None, mode=FULL, comm=comm).plain.split("\n")
    assert [line[:3] for line in short[:2]] == ["s0 ", "s1 "] and short[2] == "⇄ sent 51.4 KiB ×4"
    memory = MemoryView("rss", 0, 0, 1 << 20, 1000, 2 * 98304)
    assert "KV pool 96.0 KiB" in step_memory_text(memory, shards).plain


def test_help_says_a_cell_may_be_several_blocks_and_what_the_dot_in_the_output_is():
    """Help said 'KV: one cell per block' beside a panel saying '1 cell = 3 blocks'; the output tail's ·
    was never explained."""
    from cbtui.widgets.help_screen import READING

    assert "one cell per block" not in READING and "1 cell = 3 blocks" in READING
    assert "· stands for a byte that is not printable text" in READING
    assert "total tok/s" in READING and "ms" in READING


def test_no_gpu_is_a_note_not_a_warning():
    from cbtui.render.colors import WARN
    from cbtui.widgets.memory_panel import reading_text
    from engine.records.memory_reading import MemoryReading

    text = reading_text(MemoryReading(rss_bytes=1 << 20, note="no GPU: NVML Shared Library Not Found",
                                      source="rss"), 40)
    assert text.plain.startswith("no GPU: NVML Shared Library Not Found")
    assert all(WARN not in str(span.style) for span in text.spans)


def test_a_one_line_summary_keeps_the_cell_size_and_whose_blocks_were_freed():
    """static_vs_continuous at 80x24 (a static batch's budget takes a fourth line): the KV summary has
    one line; it kept 'used 8/96  free 88  block 8 tok  ②0 ○8' and dropped '1 cell = 3 blocks' and
    the freed request, so a merged grid read as one block a cell."""
    from cbtui.widgets.kv_grid import paged_text
    from scenarios import load_scenario

    engine = load_scenario("static_vs_continuous").build_engine(device="cpu")
    record = [engine.step() for _ in range(13)][-1]
    assert record.kv.freed == [6]
    summary = paged_text(record.kv, 38, 1, None, FULL).plain.split("\n")[0]
    assert summary == "8/96 used  3/cell  × r6 freed 2  ②0 ○8"
