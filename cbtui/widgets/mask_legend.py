"""What the mask panel is showing: its size, its scale, and which colour is which request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.text import Text
from textual.widgets import Static

from engine.records import ScheduledItem

from ..colors import request_color
from ..formatting import short_number
from ..mask_raster import MaskRaster

HIT_MARK = "↺"  # a prefill that starts after keys taken from the prefix cache


def scale_text(raster: MaskRaster | None, half_blocks: bool) -> str:
    """Under the 'queries × keys' line, so the two figures read in that order; fits 40 columns."""
    if raster is None or raster.count.size == 0:
        return ""
    rows_per_cell = raster.rows_per_pixel * (2 if half_blocks else 1)
    if raster.downsampled:
        # k is a thousand, as in the header (not "keys")
        return f"cell ≈ {short_number(rows_per_cell)} × {short_number(raster.cols_per_pixel)}, shade = % visible"
    return "every query × key shown"


class MaskLegend(Static):
    DEFAULT_CSS = """
    MaskLegend { height: 3; }
    """

    def show(self, items: Sequence[ScheduledItem], zoomed_on: int | None, raster: MaskRaster | None,
             half_blocks: bool, selected: int | None, no_color: bool, hits: Mapping[str, int] | None = None) -> None:
        """`hits`: request id -> prompt tokens taken from the prefix cache in this step; such a
        request's rows start at its cached keys, and its entry says how many ("9p↺96")."""
        hits = hits or {}
        queries = sum(i.num_tokens for i in items)
        keys = sum(i.key_len for i in items)
        head = Text.assemble(f"{queries} queries", ("↓ × ", "dim"), f"{keys} keys", ("→", "dim"))
        if zoomed_on is not None:
            head.append(f"  zoom: request {zoomed_on}", style="bold magenta")
        scale = Text(scale_text(raster, half_blocks), style="dim")
        legend = Text()
        for item in items:
            style = "bold reverse" if item.request_id == selected else ""
            if not no_color:  # without colour the id itself is the mark
                legend.append("■", style=request_color(item.request_id).hex)
            drafts = f"+{item.accepted}/{item.drafts}" if item.drafts else ""  # speculating: accepted/drafts
            hit = hits.get(str(item.request_id)) if item.kind == "prefill" else None
            legend.append(f"{item.request_id}{'d' if item.kind == 'decode' else 'p'}{drafts}", style=style)
            legend.append(f"{HIT_MARK}{hit} " if hit else " ", style="cyan" if hit else "")
        if not items:
            legend.append("nothing scheduled this step", style="dim")
        text = Text("\n").join([head, scale, legend])
        if text != getattr(self, "_text", None):
            self._text = text
            self.update(text, layout=False)
