"""Overlapped steps: the host schedules and launches step N+1 while the GPU still runs step N.

Without it every step is host work, then device work, then host work again, and the GPU idles
while the host schedules. With `EngineConfig.overlap_steps`, a step's sampled tokens stay on the
device: the next step is scheduled from token counts alone (which is all the scheduler needs when
requests end at max_new_tokens, not at an EOS token), its decodes read their input tokens from the
previous step's sampled tensor on the device, and the tokens reach the host one step later, from a
pinned buffer, while the GPU works on.

Until then a request's output holds PENDING_TOKEN where the token will go, and the step's record
is kept back: OverlappedSteps wraps the engine's synchronous step (as vLLM v1's batch queue does)
and returns each record one call later, complete. Greedy only, no plugins, no EOS (EngineConfig
and Engine check). Meant for throughput runs; the dashboard steps synchronously.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .batch_builder import long_tensor
from .records import StepRecord
from .request import Request

if TYPE_CHECKING:
    from .engine import Engine

PENDING_TOKEN = -1  # in Request.output until the step that sampled it is resolved


@dataclass
class DeviceTokens:
    """A step's greedy tokens, left on the device for the next step's decodes, with a copy on its
    way to the host and the event that says it has arrived (None off CUDA: already there)."""

    request_ids: list[int]  # whose token each row is
    on_device: torch.Tensor  # [rows]
    on_host: torch.Tensor  # the same, copied without blocking (pinned memory on CUDA)
    copied: torch.cuda.Event | None

    @classmethod
    def sample(cls, logits: torch.Tensor, request_ids: list[int]) -> DeviceTokens:
        chosen = torch.argmax(logits, dim=-1)
        if chosen.device.type != "cuda":
            return cls(request_ids, chosen, chosen, None)
        host = torch.empty(chosen.shape, dtype=chosen.dtype, pin_memory=True)
        host.copy_(chosen, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return cls(request_ids, chosen, host, copied)

    @property
    def row_of(self) -> dict[int, int]:
        return {rid: row for row, rid in enumerate(self.request_ids)}

    def to_host(self) -> list[int]:
        """Waits for this step's tokens only (later steps keep running)."""
        if self.copied is not None:
            self.copied.synchronize()
        return self.on_host.tolist()


@dataclass
class InFlightStep:
    """A launched step whose sampled tokens are still on their way to the host."""

    record: StepRecord
    tokens: DeviceTokens | None  # None: the step sampled nothing
    positions: list[int]  # where each sampled token goes in its request's output
    first_token: list[Request] = field(default_factory=list)  # sampled their first token here
    finishing: list[Request] = field(default_factory=list)  # sampled their last token here


class OverlappedSteps:
    """Runs the engine's steps one ahead: each call launches a step and hands back the previous
    one, its tokens written where the placeholders were, its record complete."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.in_flight: InFlightStep | None = None

    def step(self) -> StepRecord | None:
        engine = self.engine
        if not (engine.pending or engine.scheduler.waiting or engine.scheduler.running):
            return self.resolve()  # nothing to launch behind the step in flight
        plan, out, events, start = engine.launch_step()
        previous = self.resolve()  # the previous step's tokens and record, while this one runs
        record = engine.record_step(plan, out, events, start)  # what it captures has the previous tokens
        if out.on_device is None and previous is None:  # sampled nothing, nothing before it: done
            return record
        self.in_flight = InFlightStep(record, out.on_device, events.positions, events.first_token, events.finishing)
        return previous

    def resolve(self) -> StepRecord | None:
        """The step in flight, completed: its tokens in the outputs and the record, its finished
        requests compacted."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is None:
            return None
        record, engine = in_flight.record, self.engine
        if in_flight.tokens is not None:
            tokens = in_flight.tokens.to_host()
            now = time.perf_counter()
            by_id = engine.requests.live
            requests = [by_id[rid] for rid in in_flight.tokens.request_ids]
            for r, at, token in zip(requests, in_flight.positions, tokens, strict=True):
                r.output[at] = token
            for r in in_flight.first_token:
                r.first_token_time = now
            for r in in_flight.finishing:
                r.finish_time = now
            engine.recorder.sampled(record, in_flight.tokens.request_ids, tokens)
        for r in in_flight.finishing:  # their last tokens are in now
            engine.requests.finish(r)
        return record


def feed_pending_tokens(token_ids: torch.Tensor, tokens: list[list[int]], request_ids: list[int],
                        previous: DeviceTokens | None) -> None:
    """Replaces, on the device, each decode's PENDING_TOKEN input by the token the previous step
    sampled for it. Only decodes can hold one: a request's placeholder is resolved before it could
    be recomputed (preemption readmits it at the earliest two steps later)."""
    rows, sources = [], []
    row_of = previous.row_of if previous is not None else {}
    row = 0
    for fed, rid in zip(tokens, request_ids, strict=True):
        if PENDING_TOKEN in fed:
            if len(fed) != 1 or rid not in row_of:
                raise RuntimeError(f"request {rid} feeds an unresolved token outside a decode")
            rows.append(row)
            sources.append(row_of[rid])
        row += len(fed)
    if rows:
        assert previous is not None  # rows come from previous.row_of
        index = long_tensor(rows + sources, token_ids.device).view(2, len(rows))
        token_ids[index[0]] = previous.on_device[index[1]]
