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


def scale_text(raster: MaskRaster | None, half_blocks: bool, width: int = 38) -> str:
    """Under the 'queries × keys' line, so the two figures read in that order; fits `width` (the mask
    panel's 38 columns at 80x24), shorter rather than cut. Half blocks (colour) shade a cell by the
    share it can see; glyphs are dim when they see little. Rows shared out by request stand for
    different numbers of queries: the line gives the range ('cell ≈ 1–5 × 12')."""
    if raster is None or raster.count.size == 0:
        return ""
    if not raster.downsampled:
        return "every query × key shown"
    per_cell = 2 if half_blocks else 1
    fewest, most = (rows * per_cell for rows in raster.row_span)
    rows = short_number(most) if short_number(fewest) == short_number(most) else \
        f"{short_number(fewest)}–{short_number(most)}"
    # k is a thousand, as in the header (not "keys")
    cell = f"cell ≈ {rows} × {short_number(raster.cols_per_pixel)}"
    shades = ("shade = % visible", "shade=%") if half_blocks else ("dim = few visible", "dim=few")
    return first_that_fits(width, *(Text(f"{cell}, {shade}") for shade in shades), Text(cell)).plain


def count_of(n: int, what: str, plural: str | None = None) -> str:
    """'1 query', '23 queries', '1 key', '445 keys'."""
    return f"{n} {what if n == 1 else plural or what + 's'}"


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
        head = Text.assemble(count_of(queries, "query", "queries"), ("↓ × ", "dim"), count_of(keys, "key"),
                             ("→", "dim"))
        if zoomed_on is not None:
            head = first_that_fits(width, *(Text.assemble(head, (f"  {zoom}", f"bold {NOTE}")) for zoom in
                                            (f"zoom: request {zoomed_on}", f"zoom: {zoomed_on}")))
        hidden = raster.hidden if raster is not None else 0
        if hidden:  # more requests than rows: the mask draws the first ones, the entries name those
            head = first_that_fits(width, *(Text.assemble(head, (f"  {note}", f"bold {NOTE}")) for note in
                                            (f"{count_of(hidden, 'request')} not shown", f"+{hidden} not shown",
                                             f"+{hidden}")))
            items = [items[k] for k in raster.shown] if raster is not None else items
        scale = Text(scale_text(raster, not glyphs, width), style="dim")
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
