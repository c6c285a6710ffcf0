"""A step's RequestViews, captured in a few C-level passes and built only when someone reads them.

A record holds the requests alive in its step (running, waiting, and those that finished in it),
never the run's history, so its cost and size follow the step's activity. Building a RequestView for
each was still the largest part of a StepRecord's cost (about 0.75 ms for 512 requests on this
project's 2-core CPU), paid even when nobody looks, as in a benchmark. What changes between steps
is captured instead: one list per changing field, taken with map() over the requests. The views,
output tails included, are built on first read. Outputs only ever grow (preemption keeps them),
so a tail is the live output list cut at the length captured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter

from .records import RequestView
from .request import Request, RequestState

TAIL = 24  # generated tokens kept in each view's output tail
# Captured per request every step. The first-token step is not: it is set with the first output
# token and never changes, so it is known exactly from the captured output length.
_CHANGING = attrgetter("state", "num_computed", "num_preemptions", "drafts_proposed", "drafts_accepted",
                       "cached_tokens")


class RequestViews(Sequence):
    """Behaves as a read-only list of RequestView (iterate, index, len, compare with a list)."""

    __slots__ = ("_captured", "_length", "_scheduled", "_reasons", "_text", "_views")

    def __init__(self, requests: list[Request], scheduled_ids: set[int], reasons: dict[int, str],
                 text: Callable[[list[int]], str] | None = None):
        """text: a checkpoint tokenizer's decode, for each view's output_text (None: ids only)."""
        outputs = list(map(attrgetter("output"), requests))
        # requests, (state, computed, preemptions), output lists, output lengths; let go once built
        self._captured: tuple[list, list, list, list[int]] | None = (
            requests, list(map(_CHANGING, requests)), outputs, list(map(len, outputs)))
        self._length = len(requests)
        self._scheduled, self._reasons, self._text = scheduled_ids, reasons, text
        self._views: list[RequestView] | None = None

    def _build(self) -> list[RequestView]:
        if self._views is None:
            assert self._captured is not None
            views = []
            finished, text = RequestState.FINISHED, self._text
            for r, (state, computed, preemptions, proposed, accepted, cached), output, n in zip(*self._captured,
                                                                                                 strict=True):
                reason = None if state is finished or r.id in self._scheduled else self._reasons.get(r.id)
                prompt_len = len(r.prompt)
                ttft = r.first_token_step - r.arrival_step if n else None
                tail = output[max(0, n - TAIL):n]
                views.append(RequestView(r.id, state.value, prompt_len, min(computed, prompt_len), n,
                                         r.max_new_tokens, r.arrival_step, r.priority, ttft, reason, preemptions,
                                         tail, None if text is None else text(tail), proposed, accepted, cached,
                                         r.deadline_step))
            self._views = views
            self._captured = None
        return self._views

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index):
        return self._build()[index]

    def __iter__(self):
        return iter(self._build())

    def __eq__(self, other) -> bool:
        return isinstance(other, (list, RequestViews)) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(self._build())
