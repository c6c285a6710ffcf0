"""Stop strings: a request ends at the step whose token completes one of them in its decoded text.

The scheduler is plain Python and knows ids, not text, so a request carries this checker, which
holds the strings and the tokenizer's decode. Only the tail of the output is decoded: a string
that was already in the text one step earlier would have ended the request then, so whatever
hit there is must touch the newest tokens. The tail is long enough for the longest string even
when every token is one byte. Where the text is cut (before the string) is the caller's to say:
`cut` finds the earliest one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MAX_STOP_STRINGS = 4  # as OpenAI's API allows
MAX_STOP_LENGTH = 200  # characters per string; the tail decoded each step is bounded by it


class StopStrings:
    def __init__(self, strings: Sequence[str], decode: Callable[[list[int]], str]):
        self.strings = tuple(strings)
        self._decode = decode
        # +1: the newest token; the tail may start inside a multi-byte character (a harmless U+FFFD)
        self._tail = max(len(s.encode("utf-8")) for s in self.strings) + 1

    def hit(self, output: list[int]) -> bool:
        """Whether the decoded output, up to its newest token, holds one of the strings."""
        text = self._decode(output[-self._tail:])
        return any(s in text for s in self.strings)

    def cut(self, text: str) -> tuple[str, bool]:
        """`text` cut before the earliest stop string in it, and whether there was one."""
        found = [i for i in (text.find(s) for s in self.strings) if i >= 0]
        return (text[:min(found)], True) if found else (text, False)


def check_stop(stop: object) -> tuple[str, ...]:
    """The stop strings as a tuple; ValueError naming what is wrong."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ValueError(f"stop={stop!r} must be a string or a list of strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"stop holds {len(stop)} strings; at most {MAX_STOP_STRINGS}")
    for s in stop:
        if not s or len(s) > MAX_STOP_LENGTH:
            raise ValueError(f"stop string {s[:40]!r} must hold 1 to {MAX_STOP_LENGTH} characters")
    return tuple(stop)
