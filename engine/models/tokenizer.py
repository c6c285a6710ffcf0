"""Tokenizers: text to token ids and back.

The random presets use bytes (token id = byte value), so text prompts need no vocabulary file. A
checkpoint directory brings its own tokenizer.json, read with the `tokenizers` library; its chat
template, when a scenario asks for chat prompts, comes through `transformers` if it is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from ..records.text import decode

__all__ = ["ByteTokenizer", "CheckpointTokenizer", "Tokenizer", "decode", "encode", "tokenizer_for"]

TOKENIZER_FILE = "tokenizer.json"


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """Bytes as ids; decode shows bytes that are no text as dots (records/text.py)."""

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, ids: list[int]) -> str:
        return decode(ids)


class CheckpointTokenizer:
    """A checkpoint's tokenizer.json. Text is encoded as transformers does by default (special tokens
    such as a BOS added by the file's post-processor) and decoded with special tokens shown."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer as HFTokenizer

        from .checkpoint import CheckpointError

        self.directory = directory
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file; cbtui reads a checkpoint's tokenizer from tokenizer.json")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise CheckpointError(f"{path}: not a readable tokenizer ({str(exc).splitlines()[0]})") from None

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def chat_prompt(self, text: str) -> list[int]:
        """`text` as one user message through the checkpoint's chat template (needs transformers)."""
        from .checkpoint import CheckpointError

        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise CheckpointError(f"{self.directory}: chat prompts need the transformers package "
                                  f"(pip install transformers); or write the prompt as plain text") from None
        tok: Any = AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
        if not getattr(tok, "chat_template", None):
            raise CheckpointError(f"{self.directory}: the tokenizer has no chat template; write the prompt as "
                                  f"plain text (chat = false)")
        ids: Any = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                      tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]


def tokenizer_for(model: str) -> ByteTokenizer | CheckpointTokenizer:
    """Bytes for a preset; the directory's tokenizer.json for a checkpoint."""
    from .checkpoint import checkpoint_dir, is_preset

    return ByteTokenizer() if is_preset(model) else CheckpointTokenizer(checkpoint_dir(model))
