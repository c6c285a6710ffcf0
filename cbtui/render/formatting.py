"""Small text helpers shared by the panels."""

from __future__ import annotations


def human_bytes(n: int | float) -> str:
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(per_second: float) -> str:
    if per_second >= 10_000:
        return f"{per_second / 1000:.0f}k"
    if per_second >= 1000:
        return f"{per_second / 1000:.1f}k"
    return f"{per_second:.0f}"


def short_number(value: float) -> str:
    """A figure in at most four characters: '0.33', '6.4', '12', '120', '1.2k', '55k' (never '1.2e+02')."""
    return f"{value:.2g}" if abs(value) < 10 else human_rate(value)


def duration(seconds: float) -> str:
    """'0.42 ms', '3.1 ms', '12 ms', '1.2 s'."""
    if seconds >= 1:
        return f"{seconds:.1f} s"
    return f"{short_number(seconds * 1000)} ms"


def first_that_fits(width: int, *forms):
    """The first of `forms` (rich Texts, longest wording first) that fits `width` cells; else the last.
    Panels word a figure shorter rather than cut it."""
    for form in forms:
        if form.cell_len <= width:
            return form
    return forms[-1]


def count_of(done: int, total: int, width: int) -> str:
    """'850/3000' in `width` characters: the total, then both, in thousands when the exact pair is
    wider ('850/3k', '1234/3k', '12k/20k'); a column never cuts a figure ('850/300' read as 850 of 300)."""
    def k0(n: int) -> str:
        return str(n) if n < 1000 else f"{n / 1000:.0f}k"

    def k1(n: int) -> str:
        return str(n) if n < 1000 else f"{n / 1000:.1f}k".replace(".0k", "k")

    forms = (f"{done}/{total}", f"{done}/{k0(total)}", f"{k1(done)}/{k0(total)}", f"{k0(done)}/{k0(total)}")
    return next((f for f in forms if len(f) <= width), forms[-1])
