"""What the mask panel is showing: its size, its scale, and which colour is which request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.widgets import Static

from engine.records import ScheduledItem

from ..render.colors import NONE, NOTE, needs_glyphs, request_color, request_glyph
from ..render.formatting import first_that_fits, short_number
from ..render.mask_raster import MaskRaster

HIT_MARK = "↺"  # a prefill that starts after keys taken from the prefix cache


def scale_text(raster: MaskRaster | None, half_blocks: bool) -> str:
    """Under the 'queries × keys' line, so the two figures read in that order; fits 38 columns.
    Half blocks (colour) shade a cell by the share it can see; glyphs are dim when they see little."""
    if raster is None or raster.count.size == 0:
        return ""
    rows_per_cell = raster.rows_per_pixel * (2 if half_blocks else 1)
    if raster.downsampled:
        # k is a thousand, as in the header (not "keys")
        shade = "shade = % visible" if half_blocks else "dim = few visible"
        return f"cell ≈ {short_number(rows_per_cell)} × {short_number(raster.cols_per_pixel)}, {shade}"
    return "every query × key shown"


def legend_entries(items: Sequence[ScheduledItem], selected: int | None, mode: str, glyphs: bool,
                   hits: Mapping[str, int] | None = None) -> list[Text]:
    """One entry per scheduled item: its mark (a colour square, or the glyph the mask draws it with),
    its id and d(ecode) or p(refill); a speculating decode's accepted/proposed drafts ("3d+3/4"); a
    prefill after keys from the prefix cache, how many ("9p↺96")."""
    hits = hits or {}
    entries = []
    for item in items:
        rid = item.request_id
        kind = "d" if item.kind == "decode" else "p"
        color = None if mode == NONE else request_color(rid, mode).hex
        entry = Text(style="bold reverse" if rid == selected else "")
        if glyphs:
            glyph = request_glyph(rid)
            entry.append(glyph, style=f"bold {color}" if color else "bold")
            entry.append(f"={rid}{kind}" if glyph != str(rid) else kind)
        else:
            entry.append("■", style=color or "")
            entry.append(f"{rid}{kind}")
        if item.drafts:
            entry.append(f"+{item.accepted}/{item.drafts}")
        hit = hits.get(str(rid)) if item.kind == "prefill" else None
        if hit:
            entry.append(f"{HIT_MARK}{hit}", style="cyan")
        entries.append(entry)
    return entries


def fit_entries(entries: list[Text], width: int) -> Text:
    """As many entries as fit, then '+N' for the rest, never a cut one."""
    line = Text()
    for n, entry in enumerate(entries):
        rest = len(entries) - n - 1
        room_for_rest = len(f"+{rest}") if rest else 0
        if n and line.cell_len + entry.cell_len + 1 + room_for_rest > width:
            line.append(f"+{len(entries) - n}", style="dim")
            return line
        line.append_text(entry)
        line.append(" ")
    return line


class MaskLegend(Static):
    DEFAULT_CSS = """
    MaskLegend { height: 3; }
    """
    _text: Text | None = None  # what is drawn; None: draw the next one whatever it is

    def show(self, items: Sequence[ScheduledItem], zoomed_on: int | None, raster: MaskRaster | None,
             selected: int | None, mode: str, hits: Mapping[str, int] | None = None) -> None:
        """`hits`: request id -> prompt tokens taken from the prefix cache in this step; such a
        request's rows start at its cached keys, and its entry says how many ("9p↺96")."""
        width = self.size.width or 38
        glyphs = needs_glyphs([i.request_id for i in items], mode)
        queries = sum(i.num_tokens for i in items)
        keys = sum(i.key_len for i in items)
        head = Text.assemble(f"{queries} queries", ("↓ × ", "dim"), f"{keys} keys", ("→", "dim"))
        if zoomed_on is not None:
            head = first_that_fits(width, *(Text.assemble(head, (f"  {zoom}", f"bold {NOTE}")) for zoom in
                                            (f"zoom: request {zoomed_on}", f"zoom: {zoomed_on}")))
        scale = Text(scale_text(raster, not glyphs), style="dim")
        if items:
            legend = fit_entries(legend_entries(items, selected, mode, glyphs, hits), width)
        else:
            legend = Text("nothing scheduled this step", style="dim")
        text = Text("\n").join([head, scale, legend])
        if text != self._text:
            self._text = text
            self.update(text, layout=False)

    def on_resize(self) -> None:
        self._text = None  # the entries that fit change with the width: the next show draws them again
