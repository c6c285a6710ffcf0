"""Identity survives every colour mode: 256 colours, 16 colours (TERM=xterm) and NO_COLOR.

Textual draws our colours through rich, which downgrades each to the terminal's colour system; these
tests render with rich Consoles of each system and read the escape codes a terminal would get."""

from __future__ import annotations

import re

import pytest
from rich.color import Color as RichColor
from rich.color import ColorSystem
from rich.console import Console
from rich.text import Text

from cbtui.render.colors import (
    BAD,
    CALM,
    DECODE_COLOR,
    FULL,
    GOOD,
    NONE,
    NOTE,
    PREFILL_COLOR,
    REQUEST_PALETTE,
    SIXTEEN,
    UNUSED_COLOR,
    WARN,
    glyph_key,
    needs_glyphs,
    request_color,
    request_glyph,
)
from cbtui.widgets.kv_grid import paged_text
from cbtui.widgets.mask_legend import legend_entries
from cbtui.widgets.requests_table import id_cell
from engine.records import KVView, ScheduledItem


def downgraded(hex_color: str, system: ColorSystem) -> int | None:
    return RichColor.parse(hex_color).downgrade(system).number


def sgr_colors(text: Text, color_system: str | None) -> list[str]:
    """The foreground colour codes a terminal of that colour system receives for `text`."""
    console = Console(color_system=color_system, force_terminal=True, width=200, legacy_windows=False)
    with console.capture() as capture:
        console.print(text, end="")
    return re.findall(r"\x1b\[([0-9;]*)m", capture.get())


def test_sixteen_colours_give_each_of_twelve_requests_its_own_colour():
    codes = [downgraded(request_color(i, SIXTEEN).hex, ColorSystem.STANDARD) for i in range(12)]
    assert len(set(codes)) == 12  # requests 0 and 4 used to share blue, 1 and 3 red


def test_states_and_bar_parts_do_not_collapse_to_one_colour_in_sixteen():
    states = {name: downgraded(c, ColorSystem.STANDARD) for name, c in
              (("good", GOOD), ("warn", WARN), ("calm", CALM), ("bad", BAD), ("note", NOTE))}
    assert len(set(states.values())) == 5, states  # paused, prefill and 'no GPU' were all red
    bar = [downgraded(c.hex, ColorSystem.STANDARD) for c in (DECODE_COLOR, PREFILL_COLOR, UNUSED_COLOR)]
    assert len(set(bar)) == 3
    for mode, system in ((SIXTEEN, ColorSystem.STANDARD), (FULL, ColorSystem.EIGHT_BIT)):  # never a request's
        requests = {downgraded(request_color(i, mode).hex, system) for i in range(len(REQUEST_PALETTE))}
        assert not requests & {downgraded(c.hex, system) for c in (DECODE_COLOR, PREFILL_COLOR)}


def test_glyphs_are_used_where_colour_fails_and_say_what_they_mean():
    assert not needs_glyphs(range(12), FULL)
    assert needs_glyphs([0, 12], FULL)  # ids 12 apart share a colour
    assert needs_glyphs([0, 1], SIXTEEN) and needs_glyphs([0, 1], NONE)
    assert len({request_glyph(i) for i in range(62)}) == 62
    assert glyph_key([3, 10, 37]) == "glyph = request id A=10 b=37"


def kv_with(owners: dict[int, int]) -> KVView:
    """A paged pool of 16 blocks of 4 tokens; owners: request id -> blocks it holds (in order)."""
    tables, tokens, block = {}, {}, 0
    for rid, n in owners.items():
        tables[str(rid)] = tuple(range(block, block + n))
        tokens[str(rid)] = n * 4
        block += n
    return KVView("paged", 4, 16, block, 16 - block, tables, tokens, [], 64, {})


@pytest.mark.parametrize("mode, system", [(NONE, None), (SIXTEEN, "standard"), (FULL, "256")])
def test_kv_grid_tells_requests_apart_in_every_colour_mode(mode, system):
    kv = kv_with({0: 2, 4: 2, 12: 2})  # 0 and 4 shared blue in 16 colours; 0 and 12 share a palette slot
    text = paged_text(kv, width=38, rows=6, selected=None, mode=mode)
    plain = text.plain
    # 0 and 12 share a colour even at 256 colours: every mode shows glyphs here, and explains them
    for rid in (0, 4, 12):
        assert request_glyph(rid) in plain.split("\n", 2)[-1]
    assert "glyph = request id C=12" in plain
    codes = sgr_colors(text, system)
    if system is None:
        assert not any(re.search(r"(^|;)3[0-9]|38;", c) for c in codes)


def test_kv_grid_in_full_colour_gives_each_request_its_colour_and_no_legend_needed():
    kv = kv_with({0: 2, 4: 2, 7: 2})
    text = paged_text(kv, width=38, rows=6, selected=None, mode=FULL)
    assert "glyph" not in text.plain
    colors = {str(span.style.color) for span in text.spans if hasattr(span.style, "color") and span.style.color}
    assert len(colors) >= 3


@pytest.mark.parametrize("mode", [NONE, SIXTEEN, FULL])
def test_the_mask_legend_and_the_table_name_requests_as_the_panels_draw_them(mode):
    items = [ScheduledItem(rid, "decode", 5, 1, 6) for rid in (0, 4, 12)]
    entries = [e.plain for e in legend_entries(items, None, mode, glyphs=mode != FULL)]
    if mode == FULL:
        assert entries == ["■0d", "■4d", "■12d"]
    else:
        assert entries == ["0d", "4d", "C=12d"]
        assert id_cell(12, mode).plain == "C=12" and id_cell(4, mode).plain == "4"


def colors_in_sixteen(text: Text) -> set[int]:
    """The 16-colour numbers a Textual app sends for `text`'s foregrounds: Textual first turns named
    colours into its dark ANSI theme's truecolor (Monokai), then rich downgrades every colour."""
    from rich.style import Style
    from textual._ansi_theme import MONOKAI

    numbers = set()
    for style in [text.style, *(span.style for span in text.spans)]:
        color = Style.parse(style).color if isinstance(style, str) else style.color
        if color is None:
            continue
        if color.triplet is None:
            color = RichColor.from_triplet(color.get_truecolor(MONOKAI, foreground=True))
        numbers.add(color.downgrade(ColorSystem.STANDARD).number)
    return numbers


def test_paused_prefill_and_no_gpu_are_not_red_with_sixteen_colours():
    """They all came out bright red: named colours (yellow) went through the theme to a red-leaning
    truecolor first."""
    from cbtui.widgets.header import HeaderInfo, StepHeader
    from cbtui.widgets.memory_panel import reading_text
    from cbtui.widgets.requests_table import STATE_STYLE
    from engine.records.memory_reading import MemoryReading

    red = {1, 9}
    note = reading_text(MemoryReading(rss_bytes=1 << 20, note="no GPU: NVML not found", source="rss"), 40)
    header = StepHeader.text_for(HeaderInfo(scenario="s", engine="e", step=1, run_state="paused", speed="4/s"))
    paused = header[header.plain.index("paused"):header.plain.index("paused") + 6]
    prefill = Text("prefill", style=STATE_STYLE["prefill"])
    for text in (paused, prefill):
        assert colors_in_sixteen(text) and not colors_in_sixteen(text) & red, text.plain
    assert not colors_in_sixteen(note) & red, note.plain  # (a dim note now, no colour at all: not a warning)
