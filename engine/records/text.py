"""A record's token ids as text, for display: the byte-level tokenizer's decoding (token id = byte
value). Here, beside the records, so a widget that shows an output tail needs nothing else from
the engine; `engine.tokenizer` re-exports it."""

from __future__ import annotations


def decode(ids: list[int]) -> str:
    """Bytes as text; ids beyond a byte (bigger vocabularies) show as a middle dot."""
    raw = bytes(i if i < 256 else 0xB7 for i in ids)
    text = raw.decode("utf-8", errors="replace")
    # Control characters would break a terminal line, and stray bytes decode to U+FFFD, which
    # many terminals draw badly: both show as a dot too.
    return "".join(c if c.isprintable() and c != "\ufffd" else "\u00b7" for c in text)
