"""The KV cache: physical blocks coloured by owner (paged), or one bar per request (dense).

A request's last block shows how full it is; free blocks are dim dots; blocks that a finished
or preempted request gave back in this step (the record's `freed_blocks`) are marked with a cross
in its colour.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from engine.records import KVView
from engine.records.kv_history import flat_history

from ..colors import request_color, request_glyph

FILL_GLYPHS = "▁▂▃▄▅▆▇█"  # the last block's fill, eighths
FREE_GLYPH, FREED_GLYPH = "·", "×"


class BlockCell(NamedTuple):
    owner: int | None  # request id, None when free
    fill: float  # share of the block's slots holding tokens (1.0 for every block but the last)
    freed_by: int | None = None  # request that gave this block back in this step


FREE_CELL = BlockCell(None, 0.0)


def block_cells(kv: KVView) -> list[BlockCell]:
    cells = [FREE_CELL] * kv.num_blocks
    for rid, table in kv.block_tables.items():
        held = kv.tokens.get(rid, 0)
        owner = int(rid)
        full = BlockCell(owner, 1.0)
        gone = kv.evicted.get(rid, ())  # entries whose block was evicted hold a stand-in: not a block of theirs
        for n, block in enumerate(table):
            if n in gone:
                continue
            in_block = min(kv.block_size, max(held - n * kv.block_size, 0))
            cells[block] = full if in_block == kv.block_size else BlockCell(owner, in_block / kv.block_size)
    for rid, blocks in kv.freed_blocks.items():
        for block in blocks:
            if cells[block].owner is None:  # not handed straight to another request
                cells[block] = BlockCell(None, 0.0, freed_by=int(rid))
    return cells


def _cell_glyph(cell: BlockCell, no_color: bool) -> str:
    if cell.owner is None:
        return FREED_GLYPH if cell.freed_by is not None else FREE_GLYPH
    if no_color:
        return request_glyph(cell.owner)
    return FILL_GLYPHS[max(0, min(len(FILL_GLYPHS) - 1, round(cell.fill * len(FILL_GLYPHS)) - 1))]


@lru_cache(maxsize=256)
def _style(owner: int | None, freed_by: int | None, selected: int | None) -> Style:
    if owner is None:
        if freed_by is not None:
            return Style(color=request_color(freed_by).hex, bold=True)
        return Style(dim=True)
    dim = selected is not None and owner != selected
    return Style(color=request_color(owner).hex, dim=dim, bold=owner == selected)


def _merge(cells: list[BlockCell], group: int) -> list[BlockCell]:
    """More blocks than cells: each cell shows the owner of most of its blocks."""
    merged = []
    for start in range(0, len(cells), group):
        chunk = cells[start:start + group]
        owners = [c.owner for c in chunk if c.owner is not None]
        if owners:
            top = max(set(owners), key=owners.count)
            merged.append(BlockCell(top, len(owners) / len(chunk)))
        else:
            freed = next((c.freed_by for c in chunk if c.freed_by is not None), None)
            merged.append(BlockCell(None, 0.0, freed))
    return merged


def paged_text(kv: KVView, width: int, rows: int, selected: int | None,
               no_color: bool) -> Text:
    # The selected request's blocks as PagedAllocator.flatten reads them, on a line of its own.
    history = flat_history(kv, selected) if selected is not None and rows > 2 else None
    rows -= history is not None
    cells = block_cells(kv)
    capacity = max(width * rows, 1)
    group = -(-len(cells) // capacity) if cells else 1
    if group > 1:
        cells = _merge(cells, group)
    # Wider cells with a gap when there is room, so single blocks (pages) can be counted.
    cell_width = next((w for w in (3, 2) if (width // w) * rows >= len(cells)), 1)
    per_row = max(width // cell_width, 1)
    gap = " " if cell_width > 1 else ""
    text = Text(no_wrap=True)
    for row_start in range(0, len(cells), per_row):
        if row_start:
            text.append("\n")
        # Consecutive cells with one style become one span: a full pool is a few spans, not
        # thousands.
        run_text: list[str] = []
        run_style = None
        for cell in cells[row_start:row_start + per_row]:
            style = _style(cell.owner, cell.freed_by, selected)
            if style is not run_style and run_text:
                text.append("".join(run_text), run_style)
                run_text = []
            run_style = style
            run_text.append(_cell_glyph(cell, no_color) * max(cell_width - 1, 1) + gap)
        if run_text:
            text.append("".join(run_text), run_style)
    summary = Text.assemble(("used ", "dim"), f"{kv.blocks_used}/{kv.num_blocks}", ("  free ", "dim"),
                            str(kv.blocks_free), ("  block ", "dim"), f"{kv.block_size} tok")
    if group > 1:
        summary.append(f"  1 cell = {group} blocks", style="dim")
    if kv.freed:
        summary.append(f"  {FREED_GLYPH} freed: {', '.join(map(str, kv.freed))}", style="bold")
    lines = [summary, text]
    if history is not None and selected is not None:
        lines.insert(1, Text(history.describe(max_blocks=max(3, (width - 30) // 3)),
                             style=Style(color=request_color(selected).hex)))
    return Text("\n").join(lines)


def dense_text(kv: KVView, width: int, rows: int, selected: int | None) -> Text:
    held = sorted(((int(r), n) for r, n in kv.tokens.items()), key=lambda x: x[0])
    longest = max((n for _, n in held), default=1) or 1
    label_width = 12
    bar_width = max(width - label_width, 1)
    lines = [Text.assemble(("dense: one growing K/V tensor per request", "dim"))]
    shown = held if len(held) <= rows - 1 else held[:max(rows - 2, 0)]
    for rid, n in shown:
        cells = max(1, round(bar_width * n / longest))
        dim = selected is not None and rid != selected
        lines.append(Text.assemble(f"r{rid:<3} {n:>5} ", ("█" * cells, Style(color=request_color(rid).hex, dim=dim))))
    if len(shown) < len(held):
        lines.append(Text(f"+{len(held) - len(shown)} more requests", style="dim"))
    if kv.freed:
        lines.append(Text(f"{FREED_GLYPH} freed: {', '.join(map(str, kv.freed))}", style="bold"))
    return Text("\n").join(lines)


class KVGrid(Static):
    DEFAULT_CSS = """
    KVGrid { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._kv: KVView | None = None
        self._selected: int | None = None

    def show(self, kv: KVView | None, selected: int | None) -> None:
        self._kv, self._selected = kv, selected
        self.refresh()

    def render(self) -> Text:
        kv = self._kv
        if kv is None:
            return Text("no step yet", style="dim")
        width, height = max(self.size.width, 1), max(self.size.height, 2)
        if kv.layout == "paged":
            return paged_text(kv, width, height - 1, self._selected, self.app.no_color)
        return dense_text(kv, width, height, self._selected)
