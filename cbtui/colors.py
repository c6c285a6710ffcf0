"""One colour per request, shared by every panel so a request looks the same everywhere."""

from __future__ import annotations

from textual.color import Color

# Distinct hues that stay distinct when downgraded to 256 colours.
REQUEST_PALETTE: tuple[Color, ...] = tuple(Color.parse(c) for c in (
    "#4e9af1", "#f5a623", "#7ed321", "#e8457c", "#9b6bf2", "#2ec4b6",
    "#f8e71c", "#ff6f3c", "#50e3c2", "#c86dd7", "#b8e986", "#ff9ff3",
))

DECODE_COLOR = Color.parse("#4e9af1")
PREFILL_COLOR = Color.parse("#f5a623")
UNUSED_COLOR = Color.parse("#3a3a3a")


def palette_slot(request_id: int) -> int:
    return request_id % len(REQUEST_PALETTE)


def request_color(request_id: int) -> Color:
    return REQUEST_PALETTE[palette_slot(request_id)]


def request_glyph(request_id: int) -> str:
    """A character naming the request, for screens without colour (NO_COLOR)."""
    return "0123456789abcdefghijklmnopqrstuvwxyz"[request_id % 36]
