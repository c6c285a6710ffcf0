"""Tokenizers: text to token ids and back.

The random presets use bytes (token id = byte value), so text prompts need no vocabulary file. A
real model brings its own tokenizer.json, read with the `tokenizers` library; its chat template,
when a scenario asks for chat prompts, is rendered by chat_template.py (no transformers needed).
Which tokenizer a --model setting gets: source.tokenizer_for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from ..records.text import decode
from .checkpoint_files import MAX_JSON_BYTES, MAX_TEMPLATE_BYTES, MAX_TOKENIZER_BYTES, read_text, regular_file
from .rust_panics import is_panic, rust_panics_as

__all__ = ["ByteTokenizer", "CheckpointTokenizer", "Tokenizer", "decode", "encode"]

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def text(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """Bytes as ids; decode shows bytes that are no text as dots (records/text.py)."""

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def decode(self, ids: list[int]) -> str:
        return decode(ids)

    def text(self, ids: list[int]) -> str:
        """The bytes as the text they are (a client's answer, stop strings): UTF-8, an incomplete or
        invalid sequence as U+FFFD, control characters kept; `decode` is the drawable form."""
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CheckpointTokenizer:
    """A checkpoint's tokenizer.json. Text is encoded as transformers does by default (special tokens
    such as a BOS added by the file's post-processor) and decoded with special tokens shown."""

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer as HFTokenizer

        from .checkpoint import CheckpointError

        self.directory = directory
        self.template_file = directory / CHAT_TEMPLATE_FILE  # where chat_template() found it
        path = directory / TOKENIZER_FILE
        regular_file(path, MAX_TOKENIZER_BYTES, missing="cbtui reads a checkpoint's tokenizer from tokenizer.json")
        self.path = path
        with rust_panics_as(CheckpointError, f"{path}: not a readable tokenizer"):
            try:
                self._tok = HFTokenizer.from_file(str(path))
            except Exception as exc:  # tokenizers raises a bare Exception for a bad file
                raise CheckpointError(f"{path}: not a readable tokenizer ({_line(exc)})") from None

    def encode(self, text: str) -> list[int]:
        from .checkpoint import CheckpointError

        # A pre-tokenizer's regex may backtrack past Oniguruma's limit: the Rust code panics.
        with rust_panics_as(CheckpointError, f"{self.path}: the tokenizer failed on a prompt of {len(text)} "
                                             f"characters; fix its pre_tokenizer or use another checkpoint"):
            return list(self._tok.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: list[int]) -> str:
        from .checkpoint import CheckpointError

        try:  # called for every request at every step: the panic is caught, its hook's lines not held back
            return self._tok.decode(list(ids), skip_special_tokens=False)
        except BaseException as exc:
            if not is_panic(exc):
                raise
            raise CheckpointError(f"{self.path}: the tokenizer failed to decode {len(ids)} tokens "
                                  f"({_line(exc)}); fix its decoder or use another checkpoint") from None

    def text(self, ids: list[int]) -> str:
        """The answer's text, as a client reads it: special tokens (end of turn, ...) left out."""
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def chat_template(self) -> str | None:
        """The directory's chat template: chat_template.jinja, else tokenizer_config.json's."""
        from .checkpoint import CheckpointError

        jinja = self.directory / CHAT_TEMPLATE_FILE
        if jinja.exists() or jinja.is_symlink():
            self.template_file = jinja
            return read_text(jinja, MAX_TEMPLATE_BYTES)
        self.template_file = self.directory / CONFIG_FILE
        template = self._config().get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is not None and not isinstance(template, str):
            raise CheckpointError(f"{self.directory / CONFIG_FILE}: chat_template must be a string")
        return template or None

    def _config(self) -> dict:
        path = self.directory / CONFIG_FILE
        if not (path.exists() or path.is_symlink()):
            return {}
        text = read_text(path, MAX_JSON_BYTES)  # a FIFO or a device: one line, not a hang
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # not JSON: no template and no special tokens in it
            return {}
        return data if isinstance(data, dict) else {}

    def chat_prompt(self, text: str) -> list[int]:
        """`text` as one user message through the model's chat template (rendered in jinja2's sandbox
        as transformers' apply_chat_template renders it, then encoded without added special tokens)."""
        return self.chat_messages_prompt([{"role": "user", "content": text}])

    def chat_messages_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """A conversation ({role, content} messages) through the chat template, as chat_prompt."""
        from .chat_template import ChatTemplateError, render
        from .checkpoint import CheckpointError

        template = self.chat_template()
        if template is None:
            raise CheckpointError(f"{self.directory}: the tokenizer has no chat template; write the prompt as "
                                  f"plain text (chat = false)")
        config = self._config()
        special = {}
        for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            special[key] = value if isinstance(value, str) else None
        try:
            rendered = render(template, messages, add_generation_prompt=True, **special)
        except ChatTemplateError as exc:
            raise CheckpointError(f"{self.template_file}: {exc}; fix the template or write the prompt as plain "
                                  f"text (chat = false)") from None
        with rust_panics_as(CheckpointError, f"{self.path}: the tokenizer failed on the chat template's "
                                             f"output; fix its pre_tokenizer or use another checkpoint"):
            return list(self._tok.encode(rendered, add_special_tokens=False).ids)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
