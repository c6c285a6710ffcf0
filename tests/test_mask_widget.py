"""The mask panel draws exactly the engine's ragged causal mask, from item metadata alone."""

from __future__ import annotations

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
@given(items=items_strategy, rows=st.integers(1, 24), cols=st.integers(1, 40))
def test_every_pixel_counts_exactly_the_allowed_cells_it_covers(items, rows, cols):
    mask = engine_mask(items)
    raster = rasterize(items, rows, cols)
    prow, pcol = raster.count.shape
    assert prow <= rows and pcol <= cols  # fits the panel
    r0, r1 = _bands(mask.shape[0], prow)
    c0, c1 = _bands(mask.shape[1], pcol)
    owner_of_row = np.repeat(np.arange(len(items)), [i.num_tokens for i in items])
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
    # each query magnified to 2 pixel rows, one cell
    decodes = [item(r, 56, 1) for r in range(5)] + [item(5, 6, 1), item(6, 0, 1)]
    _, raster = mask_strips(decodes, width=38, height=10, background=BACKGROUND)
    assert raster.cols_per_pixel == (5 * 57 + 7 + 1) / 38 and raster.rows_per_pixel == 0.5
    assert scale_text(raster, half_blocks=True) == "cell ≈ 1 × 7.7, shade = % visible"
    assert scale_text(raster, half_blocks=False) == "cell ≈ 0.5 × 7.7, dim = few visible"  # glyphs
    # 600,000 queries on 10 rows of 2 pixels, 600,000 keys on 38 columns
    _, raster = mask_strips([item(0, 0, 600_000)], width=38, height=10, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 60k × 16k, shade = % visible"
    # the longest figures ('0.67', '1.2k') still fit the mask panel's 38 columns at 80x24
    _, raster = mask_strips([item(r, 14_999, 1) for r in range(3)], width=38, height=5, background=BACKGROUND)
    assert scale_text(raster, half_blocks=True) == "cell ≈ 0.67 × 1.2k, shade = % visible"
    assert len(scale_text(raster, half_blocks=True)) <= 38
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
