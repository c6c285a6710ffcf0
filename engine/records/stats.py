"""Small statistics shared by the metrics collector and the memory leak detector (pure Python)."""

from __future__ import annotations

import math
from collections.abc import Sequence

PERCENTILES = (50, 90, 95, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q={q!r} must be in 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def describe(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, min, max and the usual percentiles; None values are skipped, all None if empty."""
    present = [v for v in values if v is not None]
    keys = ["mean", "min", "max"] + [f"p{q}" for q in PERCENTILES]
    if not present:
        return {"count": 0, **{k: None for k in keys}}
    out: dict[str, float | int | None] = {
        "count": len(present), "mean": sum(present) / len(present), "min": min(present), "max": max(present)}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(present, q)
    return out


def linear_slope(values: Sequence[float]) -> float:
    """Least-squares slope of values against their index (units per sample); 0 for < 2 values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    sxy = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(values))
    return sxy / sxx


def histogram(values: Sequence[float], bins: int = 10) -> list[tuple[float, float, int]]:
    """(low, high, count) for `bins` equal-width bins over min..max; the last bin includes max.
    One bin when every value is the same; none for no values."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r} must be an integer >= 1")
    if not values:
        return []
    low, high = min(values), max(values)
    if low == high:
        return [(low, high, len(values))]
    width = (high - low) / bins
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / width), bins - 1)] += 1
    return [(low + i * width, low + (i + 1) * width if i < bins - 1 else high, c) for i, c in enumerate(counts)]
