"""Prompt lookup ("n-gram") proposals: no second model, only the request's own tokens.

The last n tokens of the sequence (prompt and output) are looked for earlier in it, longest n
first, latest occurrence first; what followed them is proposed. The copy may run into itself: a
sequence that loops with a period shorter than k (greedy decoding of a small model often does)
gets k drafts, not one period's worth.
"""

from __future__ import annotations

from ..requests.request import Request
from .acceptance import Proposal

MAX_NGRAM = 3  # longest suffix looked up
MIN_NGRAM = 1  # shortest (one token: weak, but cheap and often right in a loop)


def propose_ngram(sequence: list[int], k: int, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the sequence's longest
    matching suffix (n from max_n down to min_n); [] when no suffix occurred before.

    The rule stated plainly, a scan of the whole sequence; NgramIndex gives the same answers
    from an index kept up to date as the sequence grows (what the engine runs)."""
    if k <= 0:
        return []
    seq = sequence
    length = len(seq)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = seq[length - n:]
        first = suffix[0]
        for start in range(length - n - 1, -1, -1):  # latest earlier occurrence first
            if seq[start] == first and seq[start:start + n] == suffix:
                follow = start + n
                return _copy(seq, follow, k)
    return []


def _copy(seq: list[int], follow: int, k: int) -> list[int]:
    """k tokens from seq[follow:], reading past the end into the drafts already copied."""
    length = len(seq)
    drafts: list[int] = []
    for i in range(k):
        at = follow + i
        drafts.append(seq[at] if at < length else drafts[at - length])
    return drafts


class NgramIndex:
    """Where the latest occurrence of each n-gram (n = MIN_NGRAM..MAX_NGRAM) of one request's
    sequence ends, among those ending before the sequence's last token. Sequences only grow
    (rejected drafts never enter them; preemption keeps the tokens), so each step indexes the new
    tokens only: a lookup costs O(new tokens), not a scan of the whole sequence."""

    def __init__(self) -> None:
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> end (exclusive) of its latest occurrence
        self.indexed = 0  # n-grams ending at positions < indexed are in `ends`

    def propose(self, seq: list[int], k: int) -> list[int]:
        """propose_ngram(seq, k), from the index."""
        if k <= 0:
            return []
        length = len(seq)
        ends = self.ends
        for end in range(max(self.indexed, 1), length):  # the suffix itself (end = length) is not an earlier one
            for n in range(MIN_NGRAM, min(MAX_NGRAM, end) + 1):
                ends[tuple(seq[end - n:end])] = end
        self.indexed = max(self.indexed, length)
        for n in range(min(MAX_NGRAM, length - 1), MIN_NGRAM - 1, -1):
            follow = ends.get(tuple(seq[length - n:]))
            if follow is not None:
                return _copy(seq, follow, k)
        return []


class NgramProposer:
    """Proposals come from the scheduler's question (how many can you offer?), so the budget is
    only spent on drafts that exist; they are kept until the step proposes them."""

    def __init__(self) -> None:
        self._offered: dict[int, list[int]] = {}
        self._index: dict[int, NgramIndex] = {}  # request id -> its n-gram index

    def offer(self, request: Request, k: int) -> int:
        index = self._index.get(request.id)
        if index is None:
            index = self._index[request.id] = NgramIndex()
        drafts = index.propose(request.prompt + request.output, k)
        self._offered[request.id] = drafts
        return len(drafts)

    def propose(self, wanted: list[tuple[Request, int]]) -> list[Proposal]:
        """The offered drafts, cut to what each decode was given; no draft probabilities (a lookup
        is a point mass)."""
        offered, self._offered = self._offered, {}
        return [(offered[r.id][:n], None) for r, n in wanted]

    def rollback(self, request_id: int, num_tokens: int) -> None:
        pass  # no cache of its own: its index only ever holds the request's own tokens

    def free(self, request_id: int) -> None:
        self._offered.pop(request_id, None)  # offered, never given a draft: kept no longer than the request
        self._index.pop(request_id, None)
