"""A byte-level tokenizer: token id = byte value, so text prompts need no vocabulary file."""

from __future__ import annotations

from .records.text import decode

__all__ = ["decode", "encode"]


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))
