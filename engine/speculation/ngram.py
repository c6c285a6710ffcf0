"""Prompt lookup ("n-gram") proposals: no second model, only the request's own tokens.

The last n tokens of the sequence (prompt and output) are looked for earlier in it, longest n
first, latest occurrence first; what followed them is proposed. The copy may run into itself: a
sequence that loops with a period shorter than k (greedy decoding of a small model often does)
gets k drafts, not one period's worth.
"""

from __future__ import annotations

from ..request import Request
from .acceptance import Proposal

MAX_NGRAM = 3  # longest suffix looked up
MIN_NGRAM = 1  # shortest (one token: weak, but cheap and often right in a loop)
WINDOW = 1024  # only the last WINDOW tokens are searched: per-step host cost stays bounded


def propose_ngram(sequence: list[int], k: int, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM,
                  window: int = WINDOW) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the sequence's longest
    matching suffix (n from max_n down to min_n); [] when no suffix occurred before."""
    if k <= 0:
        return []
    seq = sequence[-window:]
    length = len(seq)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = seq[length - n:]
        first = suffix[0]
        for start in range(length - n - 1, -1, -1):  # latest earlier occurrence first
            if seq[start] == first and seq[start:start + n] == suffix:
                follow = start + n
                drafts: list[int] = []
                for i in range(k):  # reads past the end into the drafts already copied
                    at = follow + i
                    drafts.append(seq[at] if at < length else drafts[at - length])
                return drafts
    return []


class NgramProposer:
    """Proposals come from the scheduler's question (how many can you offer?), so the budget is
    only spent on drafts that exist; they are kept until the step proposes them."""

    def __init__(self) -> None:
        self._offered: dict[int, list[int]] = {}

    def offer(self, request: Request, k: int) -> int:
        drafts = propose_ngram(request.prompt + request.output, k)
        self._offered[request.id] = drafts
        return len(drafts)

    def propose(self, wanted: list[tuple[Request, int]]) -> list[Proposal]:
        """The offered drafts, cut to what each decode was given; no draft probabilities (a lookup
        is a point mass)."""
        offered, self._offered = self._offered, {}
        return [(offered[r.id][:n], None) for r, n in wanted]

    def rollback(self, request: Request) -> None:
        pass  # no state of its own

    def free(self, request_id: int) -> None:
        self._offered.pop(request_id, None)  # offered, never given a draft: kept no longer than the request
