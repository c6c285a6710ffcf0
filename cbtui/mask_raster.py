"""The ragged causal mask, downsampled to a pixel grid from scheduled-item metadata alone.

Rows are the step's query tokens (items one after another), columns are keys (each item's
key range 0 .. key_len - 1, one item after another). Query row `a` of an item whose first
position is `f` may see its own item's key `b` iff b <= f + a; every other cell is False.
That is the rule of `engine.batch_builder.ragged_causal_mask`, and it is block diagonal, so
the number of allowed cells in any rectangle has a closed form: no T x K tensor is built,
and the cost depends on the size of the pixel grid, not on the size of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.records import ScheduledItem


@dataclass(frozen=True)
class MaskRaster:
    """One frame of the mask: for every pixel, how many of its cells are allowed and whose."""

    count: np.ndarray  # [rows, cols] allowed (query, key) cells inside the pixel
    area: np.ndarray  # [rows, cols] (query, key) cells the pixel stands for
    owner: np.ndarray  # [rows, cols] index of the item with most allowed cells; -1 if none
    rows_per_pixel: float  # query tokens per pixel row (< 1 when magnified)
    cols_per_pixel: float  # keys per pixel column

    @property
    def coverage(self) -> np.ndarray:
        return self.count / self.area

    @property
    def downsampled(self) -> bool:
        return self.rows_per_pixel > 1 or self.cols_per_pixel > 1


def _bands(total: int, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) source ranges for each pixel; bands tile the source when pixels <= total."""
    p = np.arange(pixels, dtype=np.int64)
    lo = p * total // pixels
    hi = np.maximum(lo + 1, (p + 1) * total // pixels)
    return lo, hi


def pixel_count(total: int, available: int, max_magnify: int) -> int:
    """Pixels along one axis: shrink to fit, or magnify by a whole factor (capped) when small."""
    if total <= 0 or available <= 0:
        return 0
    if total >= available:
        return available
    return total * max(1, min(max_magnify, available // total))


def _allowed_prefix(first: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Allowed cells among an item's first `a` query rows and first `b` keys.

    Row x sees min(b, first + x + 1) of those keys; the first t = clip(b - first, 0, a) rows
    see first + x + 1 each and the rest see all b.
    """
    t = np.clip(b - first, 0, a)
    return t * first + t * (t + 1) // 2 + (a - t) * b


class _Items:
    """Item metadata as arrays, with the offsets of each item along both axes."""

    def __init__(self, items: Sequence[ScheduledItem]):
        self.first = np.array([i.first_pos for i in items], dtype=np.int64)
        self.n = np.array([i.num_tokens for i in items], dtype=np.int64)
        self.keys = np.array([i.key_len for i in items], dtype=np.int64)
        self.q_end = np.cumsum(self.n)
        self.k_end = np.cumsum(self.keys)
        self.q_off = self.q_end - self.n
        self.k_off = self.k_end - self.keys
        self.total = _allowed_prefix(self.first, self.n, self.keys)  # allowed cells per item
        self.before = np.concatenate([[0], np.cumsum(self.total)])  # allowed cells of items < i

    def inside(self, k: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Allowed cells of item k among rows < r and keys < c (absolute offsets)."""
        a = np.clip(r - self.q_off[k], 0, self.n[k])
        b = np.clip(c - self.k_off[k], 0, self.keys[k])
        return _allowed_prefix(self.first[k], a, b)

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


def rasterize(items: Sequence[ScheduledItem], rows: int, cols: int, max_magnify: int = 4) -> MaskRaster:
    """The mask of `items` on at most rows x cols pixels (never cropped: shrunk to fit)."""
    meta = _Items(items)
    total_q = int(meta.q_end[-1]) if len(items) else 0
    total_k = int(meta.k_end[-1]) if len(items) else 0
    prow = pixel_count(total_q, rows, max_magnify)
    pcol = pixel_count(total_k, cols, max_magnify)
    if prow == 0 or pcol == 0:
        empty = np.zeros((prow, pcol), dtype=np.int64)
        return MaskRaster(empty, empty + 1, empty - 1, 1.0, 1.0)
    r0, r1 = (x[:, None] for x in _bands(total_q, prow))
    c0, c1 = (x[None, :] for x in _bands(total_k, pcol))
    count = meta.prefix(r1, c1) - meta.prefix(r0, c1) - meta.prefix(r1, c0) + meta.prefix(r0, c0)
    area = (r1 - r0) * (c1 - c0)

    # Items that can own cells in a pixel: those overlapping both its row band and its key band.
    lo = np.maximum(np.searchsorted(meta.q_end, r0, side="right"), np.searchsorted(meta.k_end, c0, side="right"))
    hi = np.minimum(np.searchsorted(meta.q_end, r1 - 1, side="right"),
                    np.searchsorted(meta.k_end, c1 - 1, side="right"))
    lo, hi = np.broadcast_arrays(lo, hi)
    last = len(items) - 1
    lo_c, hi_c = np.minimum(lo, last), np.minimum(hi, last)
    first_part = meta.in_rect(lo_c, r0, r1, c0, c1)
    last_part = meta.in_rect(hi_c, r0, r1, c0, c1)
    owner = np.where(last_part > first_part, hi_c, lo_c)
    best = np.maximum(first_part, last_part)
    # Items strictly between the two edge items lie wholly inside the pixel.
    has_inner = hi - lo >= 2
    if has_inner.any():
        a, b = lo[has_inner] + 1, hi[has_inner] - 1
        inner = _range_argmax(meta.total, a, b)
        inner_total = meta.total[inner]
        take = inner_total > best[has_inner]
        sub_owner = owner[has_inner]
        sub_owner[take] = inner[take]
        owner = owner.copy()
        owner[has_inner] = sub_owner
    owner = np.where(count > 0, owner, -1)
    return MaskRaster(count, area, owner, total_q / prow, total_k / pcol)
