"""The mask panel draws exactly the engine's ragged causal mask, from item metadata alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from textual.color import Color

from cbtui.render.colors import NONE, REQUEST_PALETTE, SIXTEEN, palette_slot, request_glyph
from cbtui.render.formatting import short_number
from cbtui.render.mask_raster import _bands, rasterize
from cbtui.widgets.mask import decode_pixel, mask_strips, pixel_codes
from cbtui.widgets.mask_legend import scale_text
from engine.batch_builder import build_batch, mask_from_items, ragged_causal_mask
from engine.records import ScheduledItem

BACKGROUND = Color(10, 10, 10)


def item(rid: int, first_pos: int, num_tokens: int) -> ScheduledItem:
    kind = "decode" if num_tokens == 1 and first_pos > 0 else "prefill"
    return ScheduledItem(rid, kind, first_pos, num_tokens, first_pos + num_tokens)


# A decode, a first prefill chunk and a later prefill chunk: every shape the mask has.
KNOWN = [item(3, 5, 1), item(7, 0, 4), item(1, 4, 3)]


def engine_mask(items) -> np.ndarray:
    """The mask the engine's attention uses, from the real ragged batch builder."""
    tokens = [[0] * i.num_tokens for i in items]
    batch = build_batch(items, tokens, [False] * len(items), torch.device("cpu"))
    return ragged_causal_mask(batch).numpy()


def cell_colors(strips, width: int) -> list[list[tuple[Color, Color]]]:
    """(top pixel colour, bottom pixel colour) for every cell of the rendered lines."""
    rows = []
    for strip in strips:
        cells = []
        for segment in strip:
            style = segment.style
            top = Color.from_rich_color(style.color)
            bottom = Color.from_rich_color(style.bgcolor)
            for ch in segment.text:
                cells.append((top, bottom) if ch == "▀" else (bottom, bottom))
        rows.append(cells[:width])
    return rows


def test_known_batch_cell_colours_follow_the_mask_rule_exactly():
    mask = engine_mask(KNOWN)
    T, K = mask.shape  # 8 queries, 6 + 4 + 7 = 17 keys
    assert (T, K) == (8, 17)
    owner_of_row = np.repeat([i.request_id for i in KNOWN], [i.num_tokens for i in KNOWN])
    # Exactly one pixel per (query, key): height T/2 lines of half blocks, K columns.
    strips, raster = mask_strips(KNOWN, width=K, height=T // 2, background=BACKGROUND)
    assert not raster.downsampled
    colors = cell_colors(strips, K)
    for q in range(T):
        for k in range(K):
            top, bottom = colors[q // 2][k]
            got = top if q % 2 == 0 else bottom
            want = REQUEST_PALETTE[palette_slot(int(owner_of_row[q]))] if mask[q, k] else BACKGROUND
            assert got == want, f"query {q}, key {k}: mask says {mask[q, k]}"


def test_known_batch_matches_the_engine_metadata_mask_too():
    assert np.array_equal(engine_mask(KNOWN), np.array(mask_from_items(KNOWN)))


items_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.integers(1, 24)).map(lambda t: item(0, *t)), min_size=1, max_size=8,
).map(lambda items: [ScheduledItem(n, i.kind, i.first_pos, i.num_tokens, i.key_len) for n, i in enumerate(items)])


@settings(max_examples=60, deadline=None)
@given(items=items_strategy, rows=st.integers(1, 24), cols=st.integers(1, 40), aspect=st.sampled_from([1.0, 2.0]))
def test_every_pixel_counts_exactly_the_allowed_cells_it_covers(items, rows, cols, aspect):
    raster = rasterize(items, rows, cols, pixel_aspect=aspect)
    assert raster.hidden == max(len(items) - rows, 0) and len(raster.shown) == len(items) - raster.hidden
    items = [items[k] for k in raster.shown]  # more items than rows: the first ones are drawn
    mask = engine_mask(items)
    prow, pcol = raster.count.shape
    assert prow <= rows and pcol <= cols  # fits the panel
    r0, r1 = raster.row_lo, raster.row_hi
    c0, c1 = _bands(mask.shape[1], pcol)
    owner_of_row = np.repeat(np.arange(len(items)), [i.num_tokens for i in items])
    # No pixel row holds queries of two items, and every item drawn has a row of its own.
    assert all(len(set(owner_of_row[r0[y]:r1[y]])) == 1 for y in range(prow))
    assert set(owner_of_row[r0]) == set(range(len(items)))
    for y in range(prow):
        for x in range(pcol):
            cells = mask[r0[y]:r1[y], c0[x]:c1[x]]
            assert raster.count[y, x] == cells.sum()
            assert raster.area[y, x] == cells.size
            if cells.any():
                owners = np.broadcast_to(owner_of_row[r0[y]:r1[y], None], cells.shape)[cells]
                assert raster.owner[y, x] == np.bincount(owners).argmax()
            else:
                assert raster.owner[y, x] == -1
    # Never cropped: the last band ends at the last query and the last key.
    assert r1[-1] == mask.shape[0] and c1[-1] == mask.shape[1]
    if prow <= mask.shape[0] and pcol <= mask.shape[1]:  # not magnified: bands tile the mask once
        assert raster.count.sum() == mask.sum()
    # Rows are magnified no more than columns (a decode is a thin row, not a tall block).
    if raster.rows_per_pixel < 1:
        assert 1 / raster.rows_per_pixel <= max(1, 1 / raster.cols_per_pixel / aspect)


def test_big_step_is_shrunk_to_the_panel_not_cropped():
    items = [item(0, 8192, 8192)]  # 8,192 queries over 16,384 keys
    strips, raster = mask_strips(items, width=100, height=40, background=BACKGROUND)
    assert len(strips) == 40 and all(s.cell_length == 100 for s in strips)
    assert raster.count.shape == (80, 100)
    assert raster.count.sum() == 8192 * 8192 + 8192 * 8193 // 2
    assert raster.downsampled


def test_coverage_sets_brightness_and_selection_dims_the_others():
    raster = rasterize(KNOWN, 4, 4)  # 2 queries x ~4 keys per pixel
    codes = pixel_codes(raster, [i.request_id for i in KNOWN], selected=7)
    for code, owner, count, area in zip(codes.ravel(), raster.owner.ravel(), raster.count.ravel(),
                                        raster.area.ravel(), strict=True):
        if owner < 0:
            assert code == 0
            continue
        slot, level, dimmed = decode_pixel(int(code))
        rid = KNOWN[owner].request_id
        assert slot == palette_slot(rid)
        assert level == max(1, -(-count * 4 // area))
        assert dimmed == (rid != 7)


@pytest.mark.parametrize("mode", [NONE, SIXTEEN])
def test_without_enough_colours_each_cell_shows_its_requests_glyph(mode):
    """NO_COLOR and 16 colours: the mask used to shade every request alike; now each allowed cell is
    its owner's glyph, one pixel per cell, and every other cell is blank."""
    mask = engine_mask(KNOWN)
    owner_of_row = np.concatenate([[i.request_id] * i.num_tokens for i in KNOWN])
    strips, raster = mask_strips(KNOWN, width=17, height=8, background=BACKGROUND, mode=mode)
    lines = ["".join(seg.text for seg in strip) for strip in strips]
    for q in range(8):
        for k in range(17):
            want = request_glyph(int(owner_of_row[q])) if mask[q, k] else " "
            assert lines[q][k] == want, (q, k)
    colors = {seg.style.color for strip in strips for seg in strip if seg.text.strip()}
    assert colors == {None} if mode == NONE else len(colors) == len(KNOWN)


def test_empty_step_draws_blank_lines():
    strips, raster = mask_strips([], width=10, height=3, background=BACKGROUND)
    assert len(strips) == 3 and all(s.cell_length == 10 for s in strips)
    assert raster.count.size == 0


def test_scale_line_says_tokens_per_cell_without_a_k_that_reads_as_thousands():
    # 8,192 queries over 16,384 keys on 100 x 40 half-block cells: 204.8 queries x 163.84 keys a cell
    _, raster = mask_strips([item(0, 8192, 8192)], width=100, height=40, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 205 × 164, shade = % visible"
    # 7 decodes over 293 keys on 38 columns: 7.7 keys a cell (the header's 'k' is a thousand);
    # columns shrink, so rows are not magnified either: a query a pixel row, two a half-block cell
    decodes = [item(r, 56, 1) for r in range(5)] + [item(5, 6, 1), item(6, 0, 1)]
    _, raster = mask_strips(decodes, width=38, height=10, background=BACKGROUND)
    assert raster.cols_per_pixel == (5 * 57 + 7 + 1) / 38 and raster.rows_per_pixel == 1
    assert scale_text(raster, half_blocks=True) == "cell ≈ 2 × 7.7, shade = % visible"
    assert scale_text(raster, half_blocks=False) == "cell ≈ 1 × 7.7, dim = few visible"  # glyphs
    # 600,000 queries on 10 rows of 2 pixels, 600,000 keys on 38 columns
    _, raster = mask_strips([item(0, 0, 600_000)], width=38, height=10, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 60k × 16k, shade = % visible"
    # the longest figures still fit the mask panel's 38 columns at 80x24
    _, raster = mask_strips([item(r, 14_999, 1) for r in range(3)], width=38, height=5, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 2 × 1.2k, shade = % visible"
    # rows shared out by request: a decode's row is one query, a prefill's many; the line says so
    _, raster = mask_strips([item(0, 500, 1), item(1, 0, 600)], width=38, height=10, background=BACKGROUND)
    assert raster.row_span == (1, 32)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 2–64 × 29, shade = % visible"
    _, raster = mask_strips([item(0, 90000, 1), item(1, 0, 90000)], width=38, height=10, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 2–9.5k × 4.7k, shade=%"  # shorter, not cut
    assert all(len(scale_text(raster, True, width=w)) <= w for w in (38, 30, 28))
    _, raster = mask_strips([item(0, 0, 4)], width=38, height=10, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "every query × key shown"
    assert short_number(9.99) == "10" and short_number(12_345) == "12k" and short_number(0.25) == "0.25"
    assert short_number(120) == "120" and short_number(1234) == "1.2k"  # never '1.2e+02'



def test_the_demand_line_never_says_all_ran_when_a_decode_was_preempted():
    """kv_pressure, step 8: four requests ready to decode, budget 64, one preempted for KV blocks.
    The line said 'decode demand 4 <= budget 64: all ran'."""
    from cbtui.widgets.budget import demand_line
    from scenarios import load_scenario

    engine = load_scenario("kv_pressure").build_engine(device="cpu")
    record = next(r for r in iter(engine.step, None) if r.preempted and r.decode_tokens < r.decode_demand)
    line = demand_line(record).plain
    missing = record.decode_demand - record.decode_tokens
    assert "all ran" not in line
    assert line == f"decode demand {record.decode_demand}: {missing} preempted, {record.decode_tokens} ran"
    assert len(line) <= 38  # the panel's width at 80x24


def test_full_colour_draws_glyphs_only_where_they_tell_requests_apart():
    """Two requests 12 apart share a palette colour: glyphs name them. More requests than glyphs
    (62): the glyphs repeat too, and colour with its shading is kept."""
    from cbtui.render.colors import FULL, NONE, needs_glyphs

    assert not needs_glyphs(range(12), FULL)
    assert needs_glyphs([0, 12], FULL)
    assert not needs_glyphs(range(100), FULL)
    assert needs_glyphs(range(100), NONE)  # without colour, glyphs are all there is


def test_glyph_frames_draw_a_run_at_a_time_with_each_owner_glyph():
    from cbtui.render.colors import NONE

    items = [item(r, 4 * r, 4) for r in range(3)]
    strips, _ = mask_strips(items, width=12, height=12, background=BACKGROUND, mode=NONE)
    lines = ["".join(seg.text for seg in strip) for strip in strips]
    drawn = [line.strip() for line in lines if line.strip()]
    assert drawn and all(set(line) <= {"0", "1", "2"} for line in drawn)
    assert {"0", "1", "2"} <= set("".join(drawn))
    assert all(len(strip.cell_length * " ") == 12 for strip in strips)


# mixed_load step 17: seven decodes and a prefill chunk of 16, 23 queries over 445 keys.
STEP_17 = [ScheduledItem(0, "decode", 76, 1, 77), ScheduledItem(2, "decode", 127, 1, 128),
           ScheduledItem(3, "decode", 62, 1, 63), ScheduledItem(5, "decode", 49, 1, 50),
           ScheduledItem(6, "decode", 36, 1, 37), ScheduledItem(7, "decode", 38, 1, 39),
           ScheduledItem(8, "decode", 34, 1, 35), ScheduledItem(9, "prefill", 0, 16, 16)]


def recorded_items(step: int) -> list[ScheduledItem]:
    from pathlib import Path

    from engine.records.recording import load_recording

    records = load_recording(Path(__file__).with_name("data") / "mixed_load.jsonl").records
    return list(next(r for r in records if r.step == step).items)


def glyph_lines(strips) -> list[str]:
    return ["".join(seg.text for seg in strip) for strip in strips]


@pytest.mark.parametrize("mode", [NONE, SIXTEEN])
@pytest.mark.parametrize("items,height", [(STEP_17, 8), (recorded_items(7), 8), (recorded_items(6), 4)],
                         ids=["mixed_load-17", "mixed_load-7", "lesson-3"])
def test_no_text_row_holds_two_requests_queries(items, height, mode):
    """NO_COLOR / 16 colours at 80x24 (the mask is 38 x 8): step 17 drew '000000022222222222' on one
    row, so one query seemed to see two requests' keys; lesson 3 put three decodes in its top row."""
    strips, raster = mask_strips(items, width=38, height=height, background=BACKGROUND, mode=mode)
    lines = [line for line in glyph_lines(strips) if line.strip()]
    assert all(len(set(line) - {" "}) == 1 for line in lines), lines
    drawn = [items[k] for k in raster.shown]
    order = [glyph for glyph, _ in itertools.groupby(line.strip()[0] for line in lines)]
    assert order == [request_glyph(i.request_id) for i in drawn]  # each request's rows, in batch order
    decodes = [i for i in drawn if i.kind == "decode"]
    assert sum(line.strip()[0] in {request_glyph(i.request_id) for i in decodes} for line in lines) == len(decodes)


def test_in_colour_each_half_block_row_is_one_request_and_a_decode_is_one_of_them():
    """Lesson 3 (mixed_load step 6, 39 queries in 4 text rows): each request has pixel rows of its own,
    a decode exactly one (the top or bottom half of a cell row), in its own colour."""
    items = recorded_items(6)
    strips, raster = mask_strips(items, width=38, height=4, background=BACKGROUND)
    owner_of_query = np.repeat([i.request_id for i in items], [i.num_tokens for i in items])
    owners = [set(owner_of_query[lo:hi]) for lo, hi in zip(raster.row_lo, raster.row_hi, strict=True)]
    assert all(len(o) == 1 for o in owners) and len(owners) == 8
    rows_of = {i.request_id: sum(o == {i.request_id} for o in owners) for i in items}
    assert all(rows_of[i.request_id] == 1 for i in items if i.kind == "decode")
    colors = cell_colors(strips, 38)
    for y, row in enumerate(colors):  # every lit half of a cell row is its owner's colour
        for top, bottom in row:
            for half, color in ((0, top), (1, bottom)):
                if color != BACKGROUND:
                    rid = next(iter(owners[2 * y + half]))
                    shades = {BACKGROUND.blend(REQUEST_PALETTE[palette_slot(rid)], level / 4) for level in range(1, 5)}
                    assert color in shades, (y, half, rid)


@pytest.mark.parametrize("mode,lines", [(NONE, 4), ("full", 2)])
def test_a_decode_is_one_thin_row_not_a_tall_block(mode, lines):
    """compare static_vs_continuous, 160x48, step 12: four decodes over 72 keys were four solid
    squares ('cell ≈ 0.25 × 1.9': each query magnified to 4 text rows while keys shrank)."""
    decodes = [item(r, 17, 1) for r in range(4)]  # 18 keys each: 72
    strips, raster = mask_strips(decodes, width=38, height=16, background=BACKGROUND, mode=mode)
    drawn = [line for line in glyph_lines(strips) if line.strip()] if mode == NONE else \
        [s for s in strips if any(seg.text.strip() or seg.style.bgcolor != BACKGROUND.rich_color for seg in s)]
    assert len(drawn) == lines
    assert raster.rows_per_pixel == 1
    per_cell = "1" if mode == NONE else "2"  # a glyph is one pixel row, a half-block cell two
    assert scale_text(raster, half_blocks=mode != NONE).startswith(f"cell ≈ {per_cell} × 1.9")


def test_more_requests_than_rows_draws_the_first_and_keeps_the_selected_one():
    decodes = [item(r, 10, 1) for r in range(12)]
    strips, raster = mask_strips(decodes, width=20, height=8, background=BACKGROUND, mode=NONE, selected=11)
    assert raster.hidden == 4 and raster.shown == (0, 1, 2, 3, 4, 5, 6, 11)
    assert [line.strip()[0] for line in glyph_lines(strips)] == list("012345") + ["6", request_glyph(11)]
