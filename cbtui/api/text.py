"""A client's tokens as text, sent as it grows and cut where a stop string starts.

Text is decoded from all the tokens so far (a character may span tokens; decoding them one by
one would garble it) and only a part that cannot change is sent: not a trailing U+FFFD (half a
character, completed by the next token) and not a tail that could still become a stop string
(the client must never see the start of a stop string). The end-of-sequence token is not text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from engine.requests.stop_strings import StopStrings


class TextAssembler:
    def __init__(self, text: Callable[[list[int]], str], stop_ids: frozenset[int], stop: tuple[str, ...]):
        self._text = text
        self._stop_ids = stop_ids
        self._stops = StopStrings(stop, text) if stop else None
        self.ids: list[int] = []  # every token the engine gave, the end-of-sequence one included
        self._sent = 0  # characters of the text already handed out
        self.stopped = False  # a stop string or an end-of-sequence token ended the text
        self.aborted = False  # the request was aborted (the dashboard's x): finish_reason "abort"

    def add(self, tokens: Iterable[int]) -> str:
        """The new text these tokens make safe to send ('' while a character or a stop string is open)."""
        self.ids.extend(tokens)
        return self._take(final=False)

    def finish(self) -> str:
        """The rest of the text, once the request ended."""
        return self._take(final=True)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "abort" if self.aborted else "length"

    def _take(self, final: bool) -> str:
        if self.stopped:
            return ""
        ids = self.ids
        if ids and ids[-1] in self._stop_ids:
            ids, self.stopped = ids[:-1], True
        text = self._text(ids)
        end = len(text)
        if self._stops is not None:
            cut, hit = self._stops.cut(text)
            if hit:
                text, end, self.stopped = cut, len(cut), True
            elif not final:
                end -= _open_stop(text, self._stops.strings)
        if not final and not self.stopped:
            while end > self._sent and text[end - 1] == "\ufffd":
                end -= 1
        if self.stopped or final:
            end = len(text)
        piece = text[self._sent:end] if end > self._sent else ""
        self._sent = max(self._sent, end)
        return piece


def _open_stop(text: str, strings: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could be the start of a stop string."""
    longest = 0
    for s in strings:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest
