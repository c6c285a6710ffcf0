"""The bridge between the HTTP server's event loop and the one engine thread.

Nothing here touches the engine from the server's thread: a client's request is added, and a
disconnected client's request aborted, by a call the controller runs on the engine thread between
steps (EngineController.between_steps). Tokens come out of the step records: the engine, as the
controller steps it, is a ServedEngine, which hands every record to the hub on the engine thread;
the hub puts each request's tokens on its client's queue with the loop's call_soon_threadsafe.
The dashboard and the headless log see the very same records, so what a client receives is what
the screen shows, step by step: paused, no tokens; one step, one token each.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from engine.records import StepRecord

from .errors import APIError
from .translate import Generation


@dataclass
class TokenStream:
    """One client's request: its queue of (tokens, end) items, filled from the engine thread."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    request_id: int | None = None
    ended: str | None = None  # "finished", "aborted" or an error, once the last item is queued
    released: bool = False  # the server is done with it (EngineHub.ended ran)

    def put(self, tokens: list[int], end: str | None = None) -> None:
        """From the engine thread. A loop that has closed (the server stopped) takes nothing."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (tokens, end))


class EngineHub:
    def __init__(self, max_requests: int):
        self.max_requests = max_requests
        self.controller: Any = None  # the EngineController stepping the served engine (set before serving)
        self._streams: dict[int, TokenStream] = {}  # request id -> stream; read and written on the engine thread
        self._live = 0  # requests given and not ended (the server's loop only)
        self.failure: str | None = None  # the engine stopped on an error: new requests are refused
        self._lock = threading.Lock()  # publish/end_all against a restart's reset

    # -- the server's side ---------------------------------------------------------------------
    @property
    def live(self) -> int:
        return self._live

    async def submit(self, gen: Generation) -> TokenStream:
        """Queues the request on the engine thread; its stream gets the tokens of each step."""
        if self.failure is not None:
            raise APIError(503, f"the engine stopped on an error ({self.failure}); restart cbtui api")
        if self._live >= self.max_requests:
            raise APIError(429, f"the server is full: {self._live} requests are running or waiting "
                                f"(--max-requests {self.max_requests}); retry later", code="queue_full")
        stream = TokenStream(asyncio.get_running_loop())

        def add(engine: Any) -> int:
            rid = engine.add_request(gen.prompt, max_new_tokens=gen.max_tokens, temperature=gen.temperature,
                                     top_p=gen.top_p, seed=gen.seed, stop=list(gen.stop) or None)
            stream.request_id = rid
            self._streams[rid] = stream  # before the next step, on this thread: no token can come first
            return rid

        self._live += 1
        try:
            await asyncio.wrap_future(self._between_steps(add))
        except ValueError as exc:  # the engine's own check (KV blocks for the request, ...)
            self._live -= 1
            raise APIError(400, str(exc)) from None
        except RuntimeError as exc:  # the engine thread has stopped
            self._live -= 1
            raise APIError(503, f"the engine is not running ({exc})") from None
        return stream

    def ended(self, stream: TokenStream) -> None:
        """The client is done with its stream (the request ended, or it left); once per stream."""
        if stream.released:
            return
        stream.released = True
        self._live -= 1
        if stream.ended is None and stream.request_id is not None:
            self.abort(stream.request_id)

    def abort(self, request_id: int) -> Future:
        """Aborts a live request before the next step (a client that left): its blocks free then and
        its record says aborted. A request that ended meanwhile is left as it is."""
        def abort(engine: Any) -> None:
            if request_id in self._streams:
                engine.abort(request_id)
        return self._between_steps(abort)

    def _between_steps(self, call: Callable[[Any], Any]) -> Future:
        if self.controller is None:
            raise RuntimeError("no engine thread")
        return self.controller.between_steps(call)

    # -- the engine thread's side --------------------------------------------------------------
    def publish(self, record: StepRecord) -> None:
        """Each client's tokens of this step (accepted drafts first), then its end."""
        streams = self._streams
        if not streams:
            return
        with self._lock:
            kept = record.kept_drafts
            for key, token in record.sampled.items():
                stream = streams.get(int(key))
                if stream is not None:
                    stream.put([*kept.get(key, ()), token])
            for ids, end in ((record.finished, "finished"), (record.aborted, "aborted")):
                for rid in ids:
                    stream = streams.pop(rid, None)
                    if stream is not None:
                        stream.ended = end
                        stream.put([], end)

    def end_all(self, why: str) -> None:
        """Every open stream ends with an error (the engine failed, or the run was rebuilt)."""
        with self._lock:
            for stream in self._streams.values():
                stream.ended = why
                stream.put([], why)
            self._streams.clear()


class ServedEngine:
    """The engine as the controller steps it: every record goes to the hub, on the engine thread,
    before the dashboard or the log gets it; an engine that fails ends every open stream."""

    def __init__(self, engine: Any, hub: EngineHub):
        self.engine = engine
        self._hub = hub

    def step(self) -> StepRecord | None:
        try:
            record = self.engine.step()
        except Exception as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._hub.failure = why
            self._hub.end_all(f"the engine stopped on an error: {why}")
            raise
        if record is not None:
            self._hub.publish(record)
        return record

    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished()

    def header(self):
        return self.engine.header()

    def __getattr__(self, name: str) -> Any:  # add_request, abort, close, ...: the engine's own
        return getattr(self.engine, name)
