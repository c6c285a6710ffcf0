"""Colours and glyphs, shared by every panel so a request looks the same everywhere.

Identity must survive every colour mode. With 256 colours or more a request has its colour; with 16
colours (TERM=xterm) at most a dozen hues exist, and with NO_COLOR none, so the KV grid and the mask
draw each request's glyph (`request_glyph`: 0-9, then A-Z, a-z) instead, and say so on screen. They
do the same with full colour when two requests on screen share a palette colour (ids 12 apart).

The fixed colours are picked so that a 16-colour terminal still tells them apart: each lands on a
different one of its colours (tests/test_colors.py renders them with rich's downgrade).
"""

from __future__ import annotations

from collections.abc import Iterable

from textual.color import Color

FULL, SIXTEEN, NONE = "full", "16", "none"  # colour modes: 256 colours or more, 16, NO_COLOR

# Distinct hues that stay distinct when downgraded to 256 colours.
REQUEST_PALETTE: tuple[Color, ...] = tuple(Color.parse(c) for c in (
    "#4e9af1", "#f5a623", "#7ed321", "#e8457c", "#9b6bf2", "#2ec4b6",
    "#f8e71c", "#ff6f3c", "#50e3c2", "#c86dd7", "#b8e986", "#ff9ff3",
))
# The same slots with 16 colours: each is exactly one of the terminal's colours, bright ones first.
SIXTEEN_PALETTE: tuple[Color, ...] = tuple(Color.parse(c) for c in (
    "#5555ff", "#ffff55", "#55ff55", "#ff55ff", "#55ffff", "#ff5555",
    "#0000aa", "#aa5500", "#00aa00", "#aa00aa", "#00aaaa", "#aa0000",
))

# The budget bar's parts: greys, so they are never mistaken for a request (glyphs tell them apart too).
DECODE_COLOR = Color.parse("#e0e0e0")
PREFILL_COLOR = Color.parse("#8a8a8a")
UNUSED_COLOR = Color.parse("#3a3a3a")

# States and messages (rich style colours). Named ANSI colours would go through the theme and could
# all land on red with 16 colours; these land on green, yellow, cyan, red and magenta.
GOOD, WARN, CALM, BAD, NOTE = "#7ed321", "#f8e71c", "#2ec4b6", "#f0504f", "#c86dd7"

GLYPHS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def color_mode(app) -> str:
    """FULL, SIXTEEN or NONE for a running Textual app (NO_COLOR, or the terminal's colour system)."""
    if app.no_color:
        return NONE
    system = app.console.color_system
    if system is None:
        return NONE
    return SIXTEEN if system in ("standard", "windows") else FULL


def palette_slot(request_id: int) -> int:
    return request_id % len(REQUEST_PALETTE)


def request_color(request_id: int, mode: str = FULL) -> Color:
    return (SIXTEEN_PALETTE if mode == SIXTEEN else REQUEST_PALETTE)[palette_slot(request_id)]


def request_glyph(request_id: int) -> str:
    """One character naming the request: its id up to 9, then A=10 … Z=35, a=36 … z=61 (then again)."""
    return GLYPHS[request_id % len(GLYPHS)]


def needs_glyphs(request_ids: Iterable[int], mode: str) -> bool:
    """Whether colour alone cannot tell these requests apart in this mode. With full colour, glyphs
    are drawn only where they can: when the glyphs themselves repeat (more than 62 requests on screen)
    colour with its shading tells more."""
    if mode != FULL:
        return True
    ids = set(request_ids)
    if len({palette_slot(i) for i in ids}) == len(ids):
        return False
    return len({request_glyph(i) for i in ids}) == len(ids)


def glyph_key(request_ids: Iterable[int]) -> str:
    """What the glyphs on screen stand for: "glyph = request id", and the letters' ids ("A=10")."""
    letters = sorted({i for i in request_ids if request_glyph(i) != str(i)})
    return "glyph = request id" + "".join(f" {request_glyph(i)}={i}" for i in letters)
