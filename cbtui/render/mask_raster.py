"""The ragged causal mask, downsampled to a pixel grid from scheduled-item metadata alone.

Rows are the step's query tokens (items one after another), columns are keys (each item's
key range 0 .. key_len - 1, one item after another). Query row `a` of an item whose first
position is `f` may see its own item's key `b` iff b <= f + a; every other cell is False.
That is the rule of `engine.batch_builder.ragged_causal_mask`, and it is block diagonal, so
the number of allowed cells in any rectangle has a closed form: no T x K tensor is built,
and the cost depends on the size of the pixel grid, not on the size of the batch.

Pixel rows never mix two items: each item gets its own rows (at least one; a decode's single query
one row), the rest shared out by query count, so a shrunk mask is not uniform along the rows and
the raster says how many queries its rows stand for (`row_span`). Rows are never magnified more than
columns are, so a one-query decode is a thin row, not a tall block. More items than rows: the first
ones (and the one to keep in view) are drawn, and the raster says how many are not (`hidden`).

A record whose attention used a sliding window with sinks (`attention_window` = [sinks, window])
narrows the rule: key b is also allowed only if b < sinks or b > position - window. The keys it cuts
from each row form a clipped ramp, which has a closed form too (`_cut_prefix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.records import ScheduledItem


@dataclass(frozen=True)
class MaskRaster:
    """One frame of the mask: for every pixel, how many of its cells are allowed and whose."""

    count: np.ndarray  # [rows, cols] allowed (query, key) cells inside the pixel
    area: np.ndarray  # [rows, cols] (query, key) cells the pixel stands for
    owner: np.ndarray  # [rows, cols] index (into `shown`) of the item with most allowed cells; -1 if none
    rows_per_pixel: float  # query tokens per pixel row, the most of any row (< 1 when magnified)
    cols_per_pixel: float  # keys per pixel column
    row_lo: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [rows] first query
    row_hi: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [rows] past the last
    shown: tuple[int, ...] = ()  # indices of the items drawn, in batch order
    hidden: int = 0  # items not drawn: more of them than pixel rows

    @property
    def coverage(self) -> np.ndarray:
        return self.count / self.area

    @property
    def downsampled(self) -> bool:
        return self.rows_per_pixel > 1 or self.cols_per_pixel > 1

    @property
    def row_span(self) -> tuple[float, float]:
        """(fewest, most) query tokens a pixel row stands for: equal unless rows were shared out by item."""
        if not len(self.row_lo):
            return (self.rows_per_pixel, self.rows_per_pixel)
        if self.rows_per_pixel < 1:  # magnified: every query has the same number of rows
            return (self.rows_per_pixel, self.rows_per_pixel)
        sizes = self.row_hi - self.row_lo
        if sizes.max() - sizes.min() <= 1:  # bands of one even split (a query apart): their mean
            mean = float(sizes.mean())
            return (mean, mean)
        return (float(sizes.min()), float(sizes.max()))


def _bands(total: int, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) source ranges for each pixel; bands tile the source when pixels <= total."""
    p = np.arange(pixels, dtype=np.int64)
    lo = p * total // pixels
    hi = np.maximum(lo + 1, (p + 1) * total // pixels)
    return lo, hi


def _share_rows(n: np.ndarray, pixels: int) -> np.ndarray:
    """Pixel rows for items of n[i] queries (len(n) <= pixels < sum(n)): at least one each, at most
    n[i], `pixels` in all, as near n[i] * pixels / sum(n) as that allows (largest remainders)."""
    ideal = n * pixels / n.sum()
    rows = np.clip(np.floor(ideal).astype(np.int64), 1, n)
    while rows.sum() > pixels:  # the minimum of one row each took rows from the others
        over = np.where(rows > 1, rows - ideal, -np.inf)
        rows[int(np.argmax(over))] -= 1
    while rows.sum() < pixels:
        short = np.where(rows < n, ideal - rows, -np.inf)
        rows[int(np.argmax(short))] += 1
    return rows


def row_bands(n: np.ndarray, pixels: int, max_magnify: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) query ranges of each pixel row for items of n[i] queries, none straddling two items.
    Fewer queries than pixels: each query gets the same whole number of rows (up to max_magnify).
    More: each item its share (_share_rows), banded inside the item. Needs len(n) <= pixels."""
    total = int(n.sum())
    if total <= pixels:
        queries = np.arange(total, dtype=np.int64)
        lo = np.repeat(queries, max(1, min(max_magnify, pixels // total)))
        return lo, lo + 1
    offsets = np.cumsum(n) - n
    parts = [_bands(int(k), int(r)) for k, r in zip(n, _share_rows(n, pixels), strict=True)]
    lo = np.concatenate([p[0] + off for p, off in zip(parts, offsets, strict=True)])
    hi = np.concatenate([p[1] + off for p, off in zip(parts, offsets, strict=True)])
    return lo, hi


def items_in_view(items: Sequence[ScheduledItem], pixels: int, keep: int | None = None) -> list[int]:
    """Indices of the items that get rows: all, or when there are more than `pixels`, the first ones,
    with the item of request `keep` (the selected one) in place of the last if it would be left out."""
    if len(items) <= pixels:
        return list(range(len(items)))
    shown = list(range(max(pixels, 0)))
    kept = next((k for k, i in enumerate(items) if i.request_id == keep), None)
    if kept is not None and kept >= pixels and shown:
        shown[-1] = kept
    return shown


def pixel_count(total: int, available: int, max_magnify: int) -> int:
    """Pixels along one axis: shrink to fit, or magnify by a whole factor (capped) when small."""
    if total <= 0 or available <= 0:
        return 0
    if total >= available:
        return available
    return total * max(1, min(max_magnify, available // total))


def _allowed_prefix(first: np.ndarray, a: np.ndarray, b: np.ndarray,
                    window: tuple[int, int] | None = None) -> np.ndarray:
    """Allowed cells among an item's first `a` query rows and first `b` keys.

    Row x sees min(b, first + x + 1) of those keys; the first t = clip(b - first, 0, a) rows
    see first + x + 1 each and the rest see all b. A window then cuts some of them.
    """
    t = np.minimum(np.maximum(b - first, 0), a)
    causal = t * first + t * (t + 1) // 2 + (a - t) * b
    return causal if window is None else causal - _cut_prefix(first, a, b, *window)


def _ramp(n: np.ndarray, top: np.ndarray) -> np.ndarray:
    """sum of clip(y, 0, top) for y = 0 .. n - 1 (0 when n <= 0)."""
    n = np.maximum(n, 0)
    low = np.minimum(n, top + 1)
    return low * (low - 1) // 2 + (n - low) * top


def _cut_prefix(first, a, b, sinks: int, window: int) -> np.ndarray:
    """Keys a window cuts among an item's first `a` rows and first `b` keys: row x (position p =
    first + x) loses keys sinks .. p - window that are below b, clip(p - window + 1 - sinks, 0, b - sinks)."""
    top = np.maximum(b - sinks, 0)
    c = first - window + 1 - sinks
    return _ramp(c + a, top) - _ramp(c, top)


class _Items:
    """Item metadata as arrays, with the offsets of each item along both axes."""

    def __init__(self, items: Sequence[ScheduledItem], window: tuple[int, int] | None = None):
        self.window = window
        table = np.array([(i.first_pos, i.num_tokens, i.key_len) for i in items], dtype=np.int64).reshape(-1, 3)
        self.first, self.n, self.keys = table[:, 0], table[:, 1], table[:, 2]
        self.q_end = np.cumsum(self.n)
        self.k_end = np.cumsum(self.keys)
        self.q_off = self.q_end - self.n
        self.k_off = self.k_end - self.keys
        self.total = _allowed_prefix(self.first, self.n, self.keys, window)  # allowed cells per item
        self.before = np.concatenate([[0], np.cumsum(self.total)])  # allowed cells of items < i

    def inside(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Allowed cells of item k among rows < r and keys < c (absolute offsets)."""
        a = np.minimum(np.maximum(r - self.q_off[k], 0), self.n[k])
        b = np.minimum(np.maximum(c - self.k_off[k], 0), self.keys[k])
        return _allowed_prefix(self.first[k], a, b, self.window)

    def prefix(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Allowed cells in rows < r and keys < c of the whole batch.

        Items before both the row and the column boundary count whole; only the item where
        the earlier of the two boundaries falls counts in part; later items count nothing.
        """
        i = np.searchsorted(self.q_end, r, side="right")
        j = np.searchsorted(self.k_end, c, side="right")
        m = np.minimum(i, j)
        last = len(self.n) - 1
        partial = self.inside(np.minimum(m, last), r, c)
        return self.before[m] + np.where(m <= last, partial, 0)

    def in_rect(self, k, r0, r1, c0, c1) -> np.ndarray:
        return self.inside(k, r1, c1) - self.inside(k, r0, c1) - self.inside(k, r1, c0) + self.inside(k, r0, c0)


def _range_argmax(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Index of the largest value in values[lo..hi] (inclusive, lo <= hi), first on ties."""
    table = [np.arange(len(values), dtype=np.int64)]
    span = 1
    while span * 2 <= len(values):
        prev = table[-1]
        left, right = prev[:-span], prev[span:]
        table.append(np.where(values[right] > values[left], right, left))
        span *= 2
    width = hi - lo + 1
    level = np.floor(np.log2(np.maximum(width, 1))).astype(np.int64)
    out = np.empty(lo.shape, dtype=np.int64)
    for lv in np.unique(level):
        sel = level == lv
        a = table[lv][lo[sel]]
        b = table[lv][hi[sel] - (1 << lv) + 1]
        out[sel] = np.where(values[b] > values[a], b, a)
    return out


def rasterize(items: Sequence[ScheduledItem], rows: int, cols: int, max_magnify: int = 4,
              window: Sequence[int] | None = None, pixel_aspect: float = 1.0,
              keep: int | None = None) -> MaskRaster:
    """The mask of `items` on at most rows x cols pixels (never cropped: shrunk to fit); `window`
    is a record's attention_window ([sinks, window]) when its attention used one. `pixel_aspect`: a
    pixel's height over its width (2 for a whole character cell), so rows are magnified at most as
    much as columns look. `keep`: a request to keep in view when not every item gets a row."""
    shown = items_in_view(items, rows, keep)
    hidden = len(items) - len(shown)
    items = [items[k] for k in shown]
    meta = _Items(items, (int(window[0]), int(window[1])) if window is not None else None)
    total_q = int(meta.q_end[-1]) if len(items) else 0
    total_k = int(meta.k_end[-1]) if len(items) else 0
    pcol = pixel_count(total_k, cols, max_magnify)
    if total_q == 0 or pcol == 0 or rows <= 0:
        empty = np.zeros((0, 0), dtype=np.int64)
        return MaskRaster(empty, empty + 1, empty - 1, 1.0, 1.0, shown=tuple(shown), hidden=hidden)
    col_magnify = pcol // total_k if pcol > total_k else 1
    row_magnify = max(1, min(max_magnify, int(col_magnify / pixel_aspect)))
    r0, r1 = row_bands(meta.n, rows, row_magnify)
    prow = len(r0)
    c0, c1 = _bands(total_k, pcol)
    # Neighbouring pixels share band edges: evaluate the prefix count once per distinct edge.
    row_edges, row_at = np.unique(np.concatenate([r0, r1]), return_inverse=True)
    col_edges, col_at = np.unique(np.concatenate([c0, c1]), return_inverse=True)
    prefix = meta.prefix(row_edges[:, None], col_edges[None, :])
    top, bottom = row_at[:prow, None], row_at[prow:, None]
    left, right = col_at[None, :pcol], col_at[None, pcol:]
    count = prefix[bottom, right] - prefix[top, right] - prefix[bottom, left] + prefix[top, left]
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]

    # Items that can own cells in a pixel overlap both its row band and its key band: lo..hi.
    lo = np.maximum(np.searchsorted(meta.q_end, r0, side="right")[:, None],
                    np.searchsorted(meta.k_end, c0, side="right")[None, :])
    hi = np.minimum(np.searchsorted(meta.q_end, r1 - 1, side="right")[:, None],
                    np.searchsorted(meta.k_end, c1 - 1, side="right")[None, :])
    owner = np.where(count > 0, lo, -1)
    ys, xs = np.nonzero((hi > lo) & (count > 0))  # only pixels on item edges have a choice
    if ys.size:
        owner[ys, xs] = _majority_owner(meta, lo[ys, xs], hi[ys, xs], r0[ys], r1[ys], c0[xs], c1[xs])
    most = float((r1 - r0).max()) if prow < total_q else total_q / prow
    return MaskRaster(count, area, owner, most, total_k / pcol, r0, r1, tuple(shown), hidden)


def _majority_owner(meta: _Items, lo, hi, r0, r1, c0, c1) -> np.ndarray:
    """The item with most allowed cells in each pixel, among items lo..hi (first on ties).

    Items strictly between lo and hi lie wholly inside the pixel, so they count whole.
    """
    # Candidates in index order, each replacing the best only when strictly larger: first wins ties.
    owner, best = lo.copy(), meta.in_rect(lo, r0, r1, c0, c1)
    inner = hi - lo >= 2
    if inner.any():
        candidate = _range_argmax(meta.total, lo[inner] + 1, hi[inner] - 1)
        beats = meta.total[candidate] > best[inner]
        picked, picked_best = owner[inner], best[inner]
        picked[beats], picked_best[beats] = candidate[beats], meta.total[candidate][beats]
        owner[inner], best[inner] = picked, picked_best
    last_part = meta.in_rect(hi, r0, r1, c0, c1)
    owner = np.where(last_part > best, hi, owner)
    return owner


def rejected_draft_rows(items: Sequence[ScheduledItem]) -> np.ndarray:
    """Per query row of the step: True on a speculating decode's rejected drafts (its last
    drafts - accepted rows; the rows before them are its own token and the accepted drafts)."""
    flags = np.zeros(sum(i.num_tokens for i in items), dtype=bool)
    end = 0
    for item in items:
        end += item.num_tokens
        rejected = min(max(item.drafts - item.accepted, 0), item.num_tokens)  # a recording may hold anything
        if rejected:
            flags[end - rejected:end] = True
    return flags


def row_share(flags: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The share of each pixel row's query rows that are flagged (the raster's row bands [lo, hi))."""
    if not len(lo) or not len(flags):
        return np.zeros(len(lo))
    total = np.concatenate([[0], np.cumsum(flags)])
    return (total[hi] - total[lo]) / (hi - lo)
