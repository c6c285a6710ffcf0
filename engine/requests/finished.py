"""What the engine keeps of a request once it has finished: a few numbers and its tokens, in a
plain tuple the garbage collector stops tracking (a long run finishes ~100,000 requests; as live
objects they made every full collection longer), read through the same fields a Request has."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

from .request import Request, RequestState


class FinishedRequest(NamedTuple):
    id: int
    prompt_len: int
    tokens: tuple[int, ...]  # the generated tokens
    max_new_tokens: int
    arrival_step: int
    priority: int
    deadline_step: int | None
    first_token_step: int | None
    finished_step: int | None
    num_preemptions: int
    first_token_time: float | None
    arrival_time: float | None
    finish_time: float | None

    @classmethod
    def of(cls, r: Request) -> FinishedRequest:
        return cls(r.id, len(r.prompt), tuple(r.output), r.max_new_tokens, r.arrival_step, r.priority,
                   r.deadline_step, r.first_token_step, r.finished_step, r.num_preemptions, r.first_token_time,
                   r.arrival_time, r.finish_time)

    @property
    def output(self) -> list[int]:
        return list(self.tokens)

    @property
    def state(self) -> RequestState:
        return RequestState.FINISHED

    @property
    def is_finished(self) -> bool:
        return True


class Requests(Mapping):
    """Every request the engine was given, by id: live ones as Request objects, finished ones as
    FinishedRequest. Only the live ones are in the engine's hot structures."""

    def __init__(self) -> None:
        self.live: dict[int, Request] = {}
        # Plain tuples: CPython stops tracking a tuple of untracked values, but never a tuple subclass.
        self.finished: dict[int, tuple] = {}

    def __getitem__(self, rid: int) -> Request | FinishedRequest:
        live = self.live.get(rid)
        return live if live is not None else FinishedRequest._make(self.finished[rid])

    def __contains__(self, rid: object) -> bool:
        return rid in self.live or rid in self.finished

    def __iter__(self) -> Iterator[int]:
        yield from self.live
        yield from self.finished

    def __len__(self) -> int:
        return len(self.live) + len(self.finished)

    def finish(self, r: Request) -> None:
        """Swaps a request that finished (and has its tokens, overlapped or not) for its compact form."""
        del self.live[r.id]
        self.finished[r.id] = tuple(FinishedRequest.of(r))
