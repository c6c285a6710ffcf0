"""The HTTP side: GET /v1/models, POST /v1/completions and /v1/chat/completions, as OpenAI
answers them (JSON, or server-sent events ending in `data: [DONE]`), with the limits a server
open to clients needs: a body size (413), the API key (401), a full queue (429), and no traceback
ever (an unexpected error is a 500 with one line). A client that leaves mid-request has its
request aborted; nothing else changes."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from engine.models.tokenizer import Tokenizer

from .errors import APIError, bad_request
from .hub import EngineHub, TokenStream
from .prompts import chat_messages, chat_prompt, completion_prompt
from .text import TextAssembler
from .translate import (
    CHAT_DEFAULT_MAX_TOKENS,
    CHAT_FIELDS,
    COMPLETION_DEFAULT_MAX_TOKENS,
    COMPLETION_FIELDS,
    Generation,
    check_fields,
    check_model,
    generation,
)

MAX_BODY_BYTES = 1 << 20  # default --max-body: a prompt of a whole context fits many times over
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streaming request looks for its client having left


@dataclass
class ServedModel:
    """What the routes need to know of the engine, read once before serving (never from the engine
    thread's objects afterwards): its name, tokenizer, context and end-of-sequence ids."""

    name: str
    aliases: tuple[str, ...]  # other names a request may give it (the model's display name)
    tokenizer: Tokenizer
    context: int
    vocab_size: int
    stop_ids: frozenset[int]
    created: int


def build_app(hub: EngineHub, model: ServedModel, api_key: str | None = None,
              max_body: int = MAX_BODY_BYTES) -> Starlette:
    def handler(call: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                _check_key(request, api_key)
                return await call(request)
            except APIError as exc:
                return exc.response()
            except ClientDisconnect:
                return Response(status_code=499)  # nobody reads it
            except Exception as exc:  # a bug of ours: one line for the client, no traceback on the terminal
                return APIError(500, f"internal error ({type(exc).__name__}: {str(exc)[:200]})").response()
        return guarded

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(model)]})

    async def one_model(request: Request) -> Response:
        if request.path_params["name"] not in (model.name, *model.aliases):
            raise APIError(404, f"The model {request.path_params['name']!r} does not exist; this server serves "
                                f"{model.name!r}", "model", "model_not_found")
        return JSONResponse(_model_card(model))

    async def completions(request: Request) -> Response:
        body = check_fields(await _json_body(request, max_body), COMPLETION_FIELDS)
        check_model(body, model.name, model.aliases)
        if "prompt" not in body:
            raise bad_request("you must provide a prompt", "prompt")
        prompt = completion_prompt(model.tokenizer, body["prompt"], model.vocab_size)
        gen = generation(body, prompt, model.context, COMPLETION_DEFAULT_MAX_TOKENS)
        return await _answer(request, hub, model, gen, chat=False)

    async def chat_completions(request: Request) -> Response:
        body = check_fields(await _json_body(request, max_body), CHAT_FIELDS)
        check_model(body, model.name, model.aliases)
        prompt = chat_prompt(model.tokenizer, chat_messages(body.get("messages")))
        gen = generation(body, prompt, model.context, CHAT_DEFAULT_MAX_TOKENS, "max_completion_tokens"
                         if "max_completion_tokens" in body else "max_tokens")
        return await _answer(request, hub, model, gen, chat=True)

    async def health(request: Request) -> Response:  # what load generators and orchestrators poll
        if hub.failure is not None:
            raise APIError(503, f"the engine stopped on an error ({hub.failure})")
        return JSONResponse({"status": "ok", "model": model.name, "requests": hub.live})

    async def not_found(request: Request) -> Response:
        raise APIError(404, f"no such endpoint: {request.method} {request.url.path[:100]} (this server has GET "
                            f"/v1/models, POST /v1/completions, POST /v1/chat/completions and GET /health)")

    routes = [Route("/health", handler(health), methods=["GET"]),
              Route("/v1/models", handler(models), methods=["GET"]),
              Route("/v1/models/{name:path}", handler(one_model), methods=["GET"]),
              Route("/v1/completions", handler(completions), methods=["POST"]),
              Route("/v1/chat/completions", handler(chat_completions), methods=["POST"]),
              Route("/{rest:path}", handler(not_found), methods=["GET", "POST", "PUT", "DELETE", "PATCH"])]
    return Starlette(routes=routes)


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise APIError(401, "Incorrect or missing API key: send the key given to cbtui api --api-key as "
                            "'Authorization: Bearer KEY'", code="invalid_api_key")


async def _json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {declared} bytes; this server takes at most {limit} "
                            f"(--max-body)", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body passes {limit} bytes, the most this server takes (--max-body)",
                           code="body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc})") from None
    except RecursionError:  # [[[[...]]]] a hundred thousand deep
        raise bad_request("the request body nests too deeply to read") from None


def _model_card(model: ServedModel) -> dict:
    return {"id": model.name, "object": "model", "created": model.created, "owned_by": "cbtui"}


# -- answering ---------------------------------------------------------------------------------
async def _answer(request: Request, hub: EngineHub, model: ServedModel, gen: Generation, chat: bool) -> Response:
    stream = await hub.submit(gen)
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    shape = _Shape(ident, int(time.time()), model.name, chat)
    text = TextAssembler(model.tokenizer.text, model.stop_ids, gen.stop)
    if gen.stream:
        return _EventStream(_events(hub, stream, text, shape, len(gen.prompt), gen.include_usage),
                            lambda: hub.ended(stream))
    try:
        whole = await _collect(request, stream, text)
    finally:
        hub.ended(stream)
    usage = _usage(len(gen.prompt), len(text.ids))
    return JSONResponse(shape.whole(whole, text.finish_reason, usage))


async def _collect(request: Request, stream: TokenStream, text: TextAssembler) -> str:
    """The whole answer; a client that leaves while it waits has its request aborted (by the caller)."""
    parts = []
    checked = time.monotonic()
    while True:
        try:
            tokens, end = await asyncio.wait_for(stream.queue.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            tokens, end = [], None
        if time.monotonic() - checked >= DISCONNECT_POLL_S:  # by the clock: a busy stream never times out
            checked = time.monotonic()
            if await request.is_disconnected():
                raise ClientDisconnect()
        parts.append(text.add(tokens))
        if end is not None:
            _check_end(end)
            text.aborted = end == "aborted"
            parts.append(text.finish())
            return "".join(parts)


async def _events(hub: EngineHub, stream: TokenStream, text: TextAssembler, shape: _Shape, prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events as OpenAI sends them. When the client leaves, Starlette stops this
    generator, and `finally` aborts the request."""
    try:
        if shape.chat:
            yield _sse(shape.chunk({"role": "assistant", "content": ""}, None))
        while True:
            tokens, end = await stream.queue.get()
            piece = text.add(tokens)
            if end is not None:
                if end not in ("finished", "aborted"):
                    yield _sse(APIError(503, end).body())
                    break
                text.aborted = end == "aborted"
                piece += text.finish()
            if piece:
                yield _sse(shape.chunk(piece, None))
            if end is not None:
                yield _sse(shape.chunk("", text.finish_reason, last=True))
                if include_usage:
                    yield _sse(shape.usage_chunk(_usage(prompt_tokens, len(text.ids))))
                break
        yield "data: [DONE]\n\n"
    finally:
        hub.ended(stream)


class _EventStream(StreamingResponse):
    """Server-sent events whose request is let go however the response ends: a client gone before
    the first event never starts the generator, so its `finally` alone would not run."""

    def __init__(self, events: AsyncIterator[str], release: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _check_end(end: str) -> None:
    if end not in ("finished", "aborted"):
        raise APIError(503, end)


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class _Shape:
    """The JSON OpenAI gives for a completion or a chat completion, whole or in chunks."""

    ident: str
    created: int
    model: str
    chat: bool

    def _head(self, obj: str) -> dict:
        return {"id": self.ident, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage}

    def chunk(self, piece: str | dict, finish_reason: str | None, last: bool = False) -> dict:
        if self.chat:
            delta = piece if isinstance(piece, dict) else ({} if last else {"content": piece})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage}
