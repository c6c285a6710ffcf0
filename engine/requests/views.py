"""A step's RequestViews, captured as plain values in a few C-level passes and built on first read.

A record holds the requests alive in its step (running, waiting, and those that finished in it),
never the run's history, so its cost and size follow the step's activity. Building a RequestView for
each was still the largest part of a StepRecord's cost (about 0.75 ms for 512 requests on this
project's 2-core CPU), paid even when nobody looks, as in a benchmark. So the fields are captured
instead, one list per field taken with map() over the requests, output tails included: the record
keeps no live request, and nothing the engine does later can change what it says. The views are
built from those values when someone first reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter, itemgetter

from ..records import RequestView
from .request import Request, RequestState

TAIL = 24  # generated tokens kept in each view's output tail
_FIELDS = attrgetter("id", "state", "num_computed", "num_preemptions", "drafts_proposed", "drafts_accepted",
                     "cached_tokens", "max_new_tokens", "arrival_step", "priority", "first_token_step",
                     "deadline_step")
_tail = itemgetter(slice(-TAIL, None))


class RequestViews(Sequence):
    """Behaves as a read-only list of RequestView (iterate, index, len, compare with a list)."""

    __slots__ = ("_captured", "_length", "_scheduled", "_reasons", "_text", "_views")

    def __init__(self, requests: list[Request], scheduled_ids: set[int], reasons: dict[int, str],
                 text: Callable[[list[int]], str] | None = None):
        """text: a checkpoint tokenizer's decode, for each view's output_text (None: ids only)."""
        outputs = list(map(attrgetter("output"), requests))
        # (fields, prompt lengths, output lengths, output tails); let go once built
        self._captured: tuple[list, list[int], list[int], list[list[int]]] | None = (
            list(map(_FIELDS, requests)), list(map(len, map(attrgetter("prompt"), requests))),
            list(map(len, outputs)), list(map(_tail, outputs)))
        self._length = len(requests)
        self._scheduled, self._reasons, self._text = scheduled_ids, reasons, text
        self._views: list[RequestView] | None = None

    def _build(self) -> list[RequestView]:
        if self._views is None:
            assert self._captured is not None
            views = []
            finished, aborted, text = RequestState.FINISHED, RequestState.ABORTED, self._text
            for fields, prompt_len, n, tail in zip(*self._captured, strict=True):
                (rid, state, computed, preemptions, proposed, accepted, cached, max_new, arrival, priority,
                 first_token_step, deadline) = fields
                ended = state is finished or state is aborted
                reason = None if ended or rid in self._scheduled else self._reasons.get(rid)
                ttft = first_token_step - arrival if n else None
                views.append(RequestView(rid, state.value, prompt_len, min(computed, prompt_len), n, max_new,
                                         arrival, priority, ttft, reason, preemptions, tail,
                                         None if text is None else text(tail), proposed, accepted, cached,
                                         deadline))
            self._views = views
            self._captured = None
        return self._views

    def fill_pending(self, tokens: dict[int, int]) -> None:
        """An overlapped step's tokens, once read back, where its placeholders are: the last of each
        sampling request's tail (the steps before it were resolved before it was captured)."""
        assert self._captured is not None, "an overlapped step's views are built only once it is resolved"
        for fields, tail in zip(self._captured[0], self._captured[3], strict=True):
            token = tokens.get(fields[0])
            if token is not None:
                tail[-1] = token

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
