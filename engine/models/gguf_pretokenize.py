"""How a GGUF's `tokenizer.ggml.pre` splits text before byte-level BPE (llama.cpp's pre-tokenizer
names), and the byte alphabet its vocabulary is spelled in."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _byte_spelling() -> dict[int, str]:
    """GPT-2's map of the 256 bytes to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(keep, map(chr, chars), strict=True))


BYTE_ALPHABET = frozenset(_byte_spelling().values())


def respell(token: str) -> str:
    """A token as the byte alphabet spells it (a file may hold one written out in plain UTF-8)."""
    if set(token) <= BYTE_ALPHABET:
        return token
    spelling = _byte_spelling()
    return "".join(spelling[b] for b in token.encode("utf-8"))


LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
         r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# pre name -> None: GPT-2's own split; "digits": each digit alone, then GPT-2's; else a regex
SPLITS: dict[str, str | None] = {"default": None, "gpt2": None, "smollm": "digits", "llama-bpe": LLAMA3,
                                 "llama3": LLAMA3, "llama-v3": LLAMA3, "qwen2": QWEN2, "deepseek-r1-qwen": QWEN2}
