"""The ragged causal mask as a heatmap, drawn line by line (Textual's Line API).

Each character cell is two pixels stacked (the upper half block: foreground on top,
background below). A pixel stands for a band of query rows and a band of keys; its colour is
the colour of the request that owns most of its allowed cells, and its brightness is the
share of its cells that are allowed (coverage), so a shrunk mask still reads as the real one.
With NO_COLOR each cell is one pixel drawn with a shade glyph instead.
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

from ..colors import REQUEST_PALETTE
from ..mask_raster import MaskRaster, rasterize

BLACK = Color(0, 0, 0)  # the default background: a module constant, not a call in a default argument

LEVELS = 4  # brightness steps for coverage
SHADES = " ░▒▓█"  # NO_COLOR: glyph per coverage level
DIM = 0.35  # brightness of requests other than the selected one


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
            pixel = decode_pixel(code)
            if pixel is None:
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


def mask_strips(items: Sequence[ScheduledItem], width: int, height: int, selected: int | None = None,
                background: Color = BLACK, no_color: bool = False,
                book: StyleBook | None = None, window: Sequence[int] | None = None) -> tuple[list[Strip], MaskRaster]:
    """Every line of one frame of the mask panel, plus the raster they were drawn from; `window` is the
    record's attention_window (a sliding window narrows the mask to a band)."""
    book = book or StyleBook(background)
    pixel_rows = height if no_color else height * 2
    raster = rasterize(items, pixel_rows, width, max_magnify=8, window=window)
    codes = pixel_codes(raster, [i.request_id for i in items], selected)
    blank = Style(bgcolor=background.rich_color)
    strips: list[Strip] = []
    if no_color:
        level = np.where(codes > 0, (codes - 1) // 2 % LEVELS + 1, 0)
        for y in range(level.shape[0]):
            text = "".join(SHADES[v] for v in level[y])
            strips.append(Strip([Segment(text, blank)], len(text)).extend_cell_length(width, blank))
    else:
        rows = codes.shape[0]
        if rows % 2:
            codes = np.vstack([codes, np.zeros((1, codes.shape[1]), dtype=codes.dtype)])
        n_codes = 1 + len(REQUEST_PALETTE) * LEVELS * 2
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
        key = (self._items, self._selected, self._window, width, height, background, self.app.no_color)
        if key != self._frame_key:
            if self._book is None or self._book.background != background:
                self._book = StyleBook(background)
            self._strips, self.raster = mask_strips(self._items, width, height, self._selected, background,
                                                    self.app.no_color, self._book, self._window)
            self._frame_key = key
        return self._strips

    def render_line(self, y: int) -> Strip:
        strips = self._frame()
        return strips[y] if y < len(strips) else Strip.blank(self.size.width)
