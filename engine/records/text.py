"""Text for display: a record's token ids as text (`decode`), and any text from outside (scenario
files, recordings, file names, plugin notes) with its control characters made visible (`visible`).

Here, beside the records, so a widget that shows an output tail or a title needs nothing else from
the engine; `engine.models.tokenizer` re-exports `decode`.
"""

from __future__ import annotations

import re


def decode(ids: list[int]) -> str:
    """Bytes as text; ids beyond a byte (bigger vocabularies) show as a middle dot."""
    raw = bytes(i if i < 256 else 0xB7 for i in ids)
    text = raw.decode("utf-8", errors="replace")
    # Control characters would break a terminal line, and stray bytes decode to U+FFFD, which
    # many terminals draw badly: both show as a dot too.
    return "".join(c if c.isprintable() and c != "\ufffd" else "\u00b7" for c in text)


# What a terminal would act on instead of drawing, or would draw somewhere else than where it stands:
# C0 controls (ESC starts every escape sequence, BEL ends OSC ones, CR rewrites the line), DEL, C1
# controls (U+009B is a one-character CSI, U+009D an OSC), bidi embeddings, overrides and isolates
# (they reorder what follows: "Trojan source"), line and paragraph separators, and lone surrogates
# (a recording's JSON may hold one; it cannot even be encoded for the terminal).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_KEEPING_NEWLINES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
                                      "\ud800-\udfff]")


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, newlines: bool = False) -> str:
    """`text` with every control character written out as Python writes it (ESC as `\\x1b`, a tab
    as `\\t`, U+202E as `\\u202e`), so nothing from a file can move the cursor, retitle a window, set
    the clipboard or reorder a line. `newlines=True` keeps line breaks, for text shown on several lines."""
    pattern = _UNSAFE_KEEPING_NEWLINES if newlines else _UNSAFE
    return pattern.sub(_shown, text) if pattern.search(text) else text
