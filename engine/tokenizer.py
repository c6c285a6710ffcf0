"""A byte-level tokenizer: token id = byte value, so text prompts need no vocabulary file."""

from __future__ import annotations


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids: list[int]) -> str:
    """Bytes as text; ids beyond a byte (bigger vocabularies) show as a middle dot."""
    raw = bytes(i if i < 256 else 0xB7 for i in ids)
    text = raw.decode("utf-8", errors="replace")
    # Control characters would break a terminal line, and stray bytes decode to U+FFFD, which
    # many terminals draw badly: both show as a dot too.
    return "".join(c if c.isprintable() and c != "\ufffd" else "\u00b7" for c in text)
