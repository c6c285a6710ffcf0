"""Overlapped steps wrap the engine, as vLLM v1's batch queue does: each call launches a step and
hands back the one before it, complete.

With `overlap_steps`, a step's sampled tokens stay on the device (runner/overlap.py) and reach the
host one step later. Until then its requests' outputs hold placeholders and its record is kept
back; resolving it writes the tokens in, completes the record and compacts the requests that finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .records import StepRecord
from .requests.request import Request
from .runner.overlap import DeviceTokens

if TYPE_CHECKING:
    from .engine import Engine


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
