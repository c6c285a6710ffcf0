"""The ragged causal mask as a heatmap, drawn line by line (Textual's Line API).

Each character cell is two pixels stacked (the upper half block: foreground on top,
background below). A pixel stands for a band of query rows and a band of keys; its colour is
the colour of the request that owns most of its allowed cells, and its brightness is the
share of its cells that are allowed (coverage), so a shrunk mask still reads as the real one.
No cell row holds queries of two requests (mask_raster: each request gets rows of its own; a half
block's two pixels may be two requests, each in its colour), and a decode's single query is one thin
row. Where colour cannot tell the requests apart (NO_COLOR, 16 colours, two requests sharing a palette
colour) each cell is one pixel drawn with its owner's glyph (colors.request_glyph), dim where few of
its cells are allowed, so the ragged shape and whose rows are whose both survive. A speculating
decode's rejected drafts (rows past its accepted ones) are drawn in one colour of their own (in
glyphs: ×).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.color import Color
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from engine.records import ScheduledItem

from ..render.colors import FULL, NONE, REQUEST_PALETTE, color_mode, needs_glyphs, request_color, request_glyph
from ..render.mask_raster import MaskRaster, rasterize, rejected_draft_rows, row_share

BLACK = Color(0, 0, 0)  # the default background: a module constant, not a call in a default argument

LEVELS = 4  # brightness steps for coverage
DIM = 0.35  # brightness of requests other than the selected one
REJECTED = 1 + len(REQUEST_PALETTE) * LEVELS * 2  # pixel code of a rejected draft row, past every request code
REJECTED_COLOR = Color(150, 150, 150)  # grey: a row computed and thrown away
REJECTED_GLYPH = "×"


def pixel_codes(raster: MaskRaster, request_ids: Sequence[int], selected: int | None) -> np.ndarray:
    """0 for a pixel with no allowed cell; else 1 + (palette slot, coverage level, dimmed)."""
    if raster.count.size == 0:
        return np.zeros(raster.count.shape, dtype=np.int64)
    ids = np.asarray(request_ids, dtype=np.int64)
    owner_ids = ids[np.maximum(raster.owner, 0)]
    slots = owner_ids % len(REQUEST_PALETTE)
    level = np.clip(np.ceil(raster.count * LEVELS / raster.area), 1, LEVELS).astype(np.int64)
    dimmed = (owner_ids != selected).astype(np.int64) if selected is not None else 0
    codes = 1 + (slots * LEVELS + level - 1) * 2 + dimmed
    return np.where(raster.owner >= 0, codes, 0)


def decode_pixel(code: int) -> tuple[int, int, bool] | None:
    """(palette slot, coverage level 1..LEVELS, dimmed) of a pixel code; None for no cell."""
    if code == 0:
        return None
    code -= 1
    dimmed = bool(code % 2)
    code //= 2
    return code // LEVELS, code % LEVELS + 1, dimmed


class StyleBook:
    """Rich styles for pixel codes, built once per background colour."""

    def __init__(self, background: Color):
        self.background = background
        self._colors: dict[int, Color] = {}
        self._styles: dict[tuple[int, int], Style] = {}

    def color(self, code: int) -> Color:
        if code not in self._colors:
            pixel = None if code == REJECTED else decode_pixel(code)
            if code == REJECTED:
                self._colors[code] = self.background.blend(REJECTED_COLOR, 0.6)
            elif pixel is None:
                self._colors[code] = self.background
            else:
                slot, level, dimmed = pixel
                strength = level / LEVELS * (DIM if dimmed else 1.0)
                self._colors[code] = self.background.blend(REQUEST_PALETTE[slot], strength)
        return self._colors[code]

    def pair(self, top: int, bottom: int) -> Style:
        key = (top, bottom)
        if key not in self._styles:
            self._styles[key] = Style(color=self.color(top).rich_color, bgcolor=self.color(bottom).rich_color)
        return self._styles[key]


def _row_runs(grid: np.ndarray) -> list[list[tuple[int, int]]]:
    """For each row: (length, value) of each run of equal values, found in one numpy pass."""
    rows, cols = grid.shape
    if cols == 0:
        return [[] for _ in range(rows)]
    starts = np.ones(grid.shape, dtype=bool)
    starts[:, 1:] = grid[:, 1:] != grid[:, :-1]
    ys, xs = np.nonzero(starts)
    values = grid[ys, xs]
    ends = np.append(xs[1:], cols)
    ends[np.append(ys[1:] != ys[:-1], True)] = cols  # a row's last run ends at the edge
    out: list[list[tuple[int, int]]] = [[] for _ in range(rows)]
    for y, x, end, value in zip(ys.tolist(), xs.tolist(), ends.tolist(), values.tolist(), strict=True):
        out[y].append((end - x, value))
    return out


def glyph_style(owner: int, level: int, selected: int | None, mode: str, background: Color) -> Style:
    """A glyph pixel: the owner's colour where there is one; dim when few cells are allowed or another
    request is selected; bold (underlined without colour) for the selected one."""
    dim = level <= LEVELS // 2 or (selected is not None and owner != selected)
    color = None if mode == NONE else request_color(owner, mode).rich_color
    return Style(color=color, bgcolor=background.rich_color, dim=dim, bold=owner == selected,
                 underline=owner == selected and mode == NONE)


def glyph_strips(raster: MaskRaster, request_ids: Sequence[int], width: int, selected: int | None,
                 mode: str, background: Color, rejected: np.ndarray | None = None) -> list[Strip]:
    """One pixel per cell, each its owner's glyph (× on the rows of rejected drafts: `rejected`).
    Pixels are coded (owner, dim) and drawn a run at a time, as the colour path does."""
    blank = Style(bgcolor=background.rich_color)
    if raster.count.size == 0:
        return []
    ids = np.asarray(request_ids, dtype=np.int64)
    owner_ids = ids[np.maximum(raster.owner, 0)]
    faint = np.ceil(raster.count * LEVELS / raster.area) <= LEVELS // 2
    codes = np.where(raster.owner >= 0, owner_ids * 2 + faint, -1)  # -1: no cell
    if rejected is not None and rejected.any():  # a rejected draft's pixel: -3 - code (always below -1)
        codes = np.where(rejected[:, None] & (codes >= 0), -3 - codes, codes)
    styles: dict[int, Style] = {}
    strips = []
    for runs in _row_runs(codes):
        segments = []
        for length, value in runs:
            if value == -1:
                segments.append(Segment(" " * length, blank))
                continue
            code = value if value >= 0 else -3 - value
            owner, dim = divmod(code, 2)
            style = styles.get(value)
            if style is None:
                style = styles[value] = glyph_style(owner, 1 if dim or value < 0 else LEVELS, selected, mode,
                                                    background)
            glyph = request_glyph(owner) if value >= 0 else REJECTED_GLYPH
            segments.append(Segment(glyph * length, style))
        strips.append(Strip(segments, codes.shape[1]).extend_cell_length(width, blank))
    return strips


def mask_strips(items: Sequence[ScheduledItem], width: int, height: int, selected: int | None = None,
                background: Color = BLACK, mode: str = FULL, book: StyleBook | None = None,
                window: Sequence[int] | None = None) -> tuple[list[Strip], MaskRaster]:
    """Every line of one frame of the mask panel, plus the raster they were drawn from; `window` is the
    record's attention_window (a sliding window narrows the mask to a band)."""
    book = book or StyleBook(background)
    glyphs = needs_glyphs([i.request_id for i in items], mode)
    pixel_rows = height if glyphs else height * 2
    # A glyph is a whole cell, twice as tall as wide; a half block is about square.
    raster = rasterize(items, pixel_rows, width, max_magnify=8, window=window, pixel_aspect=2.0 if glyphs else 1.0,
                       keep=selected)
    items = [items[k] for k in raster.shown]  # more requests than rows: those that got one
    request_ids = [i.request_id for i in items]
    speculating = any(i.drafts for i in items)  # else no row is a rejected draft: skip the per-row pass
    rejected = row_share(rejected_draft_rows(items), raster.row_lo, raster.row_hi) >= 0.5 if speculating else None
    blank = Style(bgcolor=background.rich_color)
    strips: list[Strip] = []
    if glyphs:
        strips = glyph_strips(raster, request_ids, width, selected, mode, background, rejected)
    else:
        codes = pixel_codes(raster, request_ids, selected)
        if rejected is not None and rejected.any():
            codes = np.where(rejected[:, None] & (codes > 0), REJECTED, codes)
        rows = codes.shape[0]  # two pixels per cell: upper half block, foreground over background
        if rows % 2:
            codes = np.vstack([codes, np.zeros((1, codes.shape[1]), dtype=codes.dtype)])
        n_codes = REJECTED + 1
        pairs = codes[0::2] * n_codes + codes[1::2]
        for runs in _row_runs(pairs):
            segments = []
            for length, value in runs:
                top, bottom = divmod(value, n_codes)
                char = " " if top == bottom else "▀"
                segments.append(Segment(char * length, book.pair(top, bottom)))
            strips.append(Strip(segments, pairs.shape[1]).extend_cell_length(width, blank))
    while len(strips) < height:
        strips.append(Strip([Segment(" " * width, blank)], width))
    return strips, raster


class MaskCanvas(Widget):
    """Draws the mask of the items it is given; the frame is built once per change or resize.

    The scale a legend shows depends on the canvas size, which is only known after layout: the
    canvas posts `Rescaled` whenever its size changes (the first layout included), so whoever draws
    the legend can draw it again from `current_raster()`.
    """

    class Rescaled(Message):
        """The canvas has a new size, so a new raster and scale."""

    DEFAULT_CSS = """
    MaskCanvas { width: 1fr; height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._items: tuple[ScheduledItem, ...] = ()
        self._selected: int | None = None
        self._window: tuple[int, ...] | None = None
        self._frame_key: tuple | None = None
        self._strips: list[Strip] = []
        self._book: StyleBook | None = None
        self.raster: MaskRaster | None = None

    def show(self, items: Sequence[ScheduledItem], selected: int | None,
             window: Sequence[int] | None = None) -> None:
        items, window = tuple(items), tuple(window) if window is not None else None
        if items != self._items or selected != self._selected or window != self._window:
            self._items, self._selected, self._window = items, selected, window
            self.refresh()

    def on_resize(self) -> None:
        self.post_message(self.Rescaled())

    def current_raster(self) -> MaskRaster | None:
        """The raster of the frame for the current items at the current size; None before the
        canvas has a size (before the first layout), when there is no scale to read yet."""
        if not self.size.area:
            return None
        self._frame()
        return self.raster

    def _frame(self) -> list[Strip]:
        width, height = self.size
        _, background = self.background_colors
        mode = color_mode(self.app)
        key = (self._items, self._selected, self._window, width, height, background, mode)
        if key != self._frame_key:
            if self._book is None or self._book.background != background:
                self._book = StyleBook(background)
            self._strips, self.raster = mask_strips(self._items, width, height, self._selected, background,
                                                    mode, self._book, self._window)
            self._frame_key = key
        return self._strips

    def render_line(self, y: int) -> Strip:
        strips = self._frame()
        return strips[y] if y < len(strips) else Strip.blank(self.size.width)
