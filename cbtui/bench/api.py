"""`cbtui bench api`: what the HTTP path costs. N streaming clients, arriving at a given rate, run
the same workload twice on the same engine settings: through `cbtui api`'s server (uvicorn, HTTP,
server-sent events, JSON) and in-process (the same hub, engine thread and text assembly, the
clients calling the hub directly). TTFT and inter-token latency percentiles and output throughput
for both, and each HTTP figure as a ratio to the in-process one of the same repetition.

Everything runs in this process (clients, server, engine thread: one GIL, as in-process), runs
are interleaved (in-process, HTTP; then HTTP, in-process; ...), each on a fresh engine after a
warm-up request, and the tiny model on the CPU on one torch thread, as `cbtui api` runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import torch

from engine import Engine, EngineConfig

from ..api.hub import EngineHub, ServedEngine
from ..api.routes import build_app
from ..api.server import ServerThread, base_url, bind, served_model
from ..api.text import TextAssembler
from ..api.translate import Generation
from ..run.controller import MAX_SPEED, EngineController
from .machine import cpu_model
from .metrics import percentile

PERCENTILES = (50, 90, 99)


@dataclass
class ClientTimes:
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0


@dataclass
class PathRun:
    path: str  # "in-process" or "http"
    wall_s: float
    clients: list[ClientTimes]

    @property
    def output_tok_s(self) -> float:
        return sum(c.tokens for c in self.clients) / self.wall_s

    def ttft_ms(self, q: float) -> float | None:
        p = percentile([c.ttft_s for c in self.clients if c.ttft_s is not None], q)
        return None if p is None else 1000 * p

    def itl_ms(self, q: float) -> float | None:
        p = percentile([g for c in self.clients for g in c.gaps_s], q)
        return None if p is None else 1000 * p


def prompts(clients: int, prompt_tokens: int) -> list[str]:
    """Distinct prompts of prompt_tokens bytes each (the tiny model's tokens are bytes)."""
    return [(f"client {i}: " + "tell me about continuous batching " * 64)[:prompt_tokens] for i in range(clients)]


class Timed:
    """A client's clock: TTFT at the first text, then the gap before each later piece of text."""

    def __init__(self, sent: float):
        self.sent = sent
        self.last: float | None = None
        self.times = ClientTimes()

    def text(self, piece: str) -> None:
        if not piece:
            return
        now = time.perf_counter()
        if self.last is None:
            self.times.ttft_s = now - self.sent
        else:
            self.times.gaps_s.append(now - self.last)
        self.last = now


# -- the two paths -----------------------------------------------------------------------------
def _engine(model: str, device: str) -> Engine:
    return Engine(EngineConfig(model=model, device=device, max_tokens_per_step=512, prefill_chunk_size=256))


async def _clients(texts: list[str], rate: float, one: Callable[[int, str], Awaitable[ClientTimes]]) -> PathRun:
    async def arrive(i: int, text: str) -> ClientTimes:
        if rate > 0:
            await asyncio.sleep(i / rate)
        return await one(i, text)

    start = time.perf_counter()
    times = await asyncio.gather(*(arrive(i, t) for i, t in enumerate(texts)))
    return PathRun("", time.perf_counter() - start, list(times))


def run_in_process(texts: list[str], max_tokens: int, rate: float, model: str, device: str) -> PathRun:
    engine = _engine(model, device)
    spec = served_model(engine)
    hub = EngineHub(max_requests=len(texts) + 1)
    controller = EngineController(ServedEngine(engine, hub), lambda r: None, lambda s: None, speed=MAX_SPEED)
    hub.controller = controller
    controller.start()

    async def one(i: int, text: str) -> ClientTimes:
        clock = Timed(time.perf_counter())
        stream = await hub.submit(Generation(spec.tokenizer.encode(text), max_tokens, 0.0, 1.0, None, (), True,
                                             False))
        assembler = TextAssembler(spec.tokenizer.text, spec.stop_ids, ())
        try:
            while True:
                tokens, end = await stream.queue.get()
                clock.text(assembler.add(tokens))
                if end is not None:
                    clock.text(assembler.finish())
                    clock.times.tokens = len(assembler.ids)
                    return clock.times
        finally:
            hub.ended(stream)

    async def everything() -> PathRun:
        await one(-1, "warm up")
        return await _clients(texts, rate, one)

    try:
        run = asyncio.run(everything())
    finally:
        controller.stop()
        engine.close()
    run.path = "in-process"
    return run


async def _http_stream(host: str, port: int, body: bytes, clock: Timed) -> int:
    """One streaming completion over a plain connection; the completion tokens from its usage chunk."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"the server answered {status.decode(errors='replace').strip()}")
        while (await reader.readline()).strip():  # headers
            pass
        buffer, tokens = b"", 0
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)  # chunked transfer
            if size == 0:
                return tokens
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                data = event.removeprefix(b"data: ")
                if data == b"[DONE]":
                    return tokens
                chunk = json.loads(data)
                if "error" in chunk:
                    raise RuntimeError(f"the server ended a stream: {chunk['error']['message']}")
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk["choices"]:
                    clock.text(choice["text"])
    finally:
        writer.close()


def run_http(texts: list[str], max_tokens: int, rate: float, model: str, device: str) -> PathRun:
    engine = _engine(model, device)
    hub = EngineHub(max_requests=len(texts) + 1)
    sock = bind("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    app = build_app(hub, served_model(engine))
    controller = EngineController(ServedEngine(engine, hub), lambda r: None, lambda s: None, speed=MAX_SPEED)
    hub.controller = controller
    server = ServerThread(app, hub, sock)
    controller.start()
    server.start()

    async def one(i: int, text: str) -> ClientTimes:
        body = json.dumps({"model": engine.header().model, "prompt": text, "max_tokens": max_tokens,
                           "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
        clock = Timed(time.perf_counter())
        clock.times.tokens = await _http_stream(host, port, body, clock)
        return clock.times

    async def everything() -> PathRun:
        deadline = time.monotonic() + 30
        while not server.server.started:  # uvicorn's own flag: listening and serving
            if time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server at {base_url(sock)} did not start")
            await asyncio.sleep(0.01)
        await one(-1, "warm up")
        return await _clients(texts, rate, one)

    try:
        run = asyncio.run(everything())
    finally:
        server.stop()
        controller.stop()
        engine.close()
    run.path = "http"
    return run


# -- the whole bench ---------------------------------------------------------------------------
def run_api_bench(clients: int, rate: float, prompt_tokens: int, max_tokens: int, repeat: int,
                  model: str = "tiny", device: str = "cpu",
                  progress: Callable[[str], None] = lambda line: None) -> dict:
    if device == "cpu" and model == "tiny":
        torch.set_num_threads(1)  # as cbtui api runs it
    texts = prompts(clients, prompt_tokens)
    runs: dict[str, list[PathRun]] = {"in-process": [], "http": []}
    for r in range(repeat):
        order = (run_in_process, run_http) if r % 2 == 0 else (run_http, run_in_process)
        for runner in order:
            run = runner(texts, max_tokens, rate, model, device)
            runs[run.path].append(run)
            progress(f"repetition {r + 1}/{repeat}: {run.path} {run.wall_s:.2f} s, {run.output_tok_s:.0f} tok/s")
    return report(runs, dict(clients=clients, rate=rate, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                             repeat=repeat, model=model, device=device))


def report(runs: dict[str, list[PathRun]], settings: dict) -> dict:
    def figures(run: PathRun) -> dict:
        out: dict[str, float | None] = {"output_tok_s": run.output_tok_s, "wall_s": run.wall_s}
        for q in PERCENTILES:
            out[f"ttft_p{q}_ms"] = run.ttft_ms(q)
            out[f"itl_p{q}_ms"] = run.itl_ms(q)
        return out

    per_path = {path: [figures(r) for r in rs] for path, rs in runs.items()}
    medians = {path: {k: _median([f[k] for f in fs]) for k in fs[0]} for path, fs in per_path.items()}
    # each HTTP figure over the in-process one of the same repetition, then the median of those ratios
    ratios = {k: _median([h[k] / p[k] for h, p in zip(per_path["http"], per_path["in-process"], strict=True)
                          if h[k] is not None and p[k]]) for k in per_path["http"][0]}
    load = os.getloadavg()
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "load_1m_5m_15m": [round(x, 2) for x in load]}
    return {"settings": settings, "machine": machine, "median": medians, "http_over_in_process": ratios,
            "runs": per_path}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table_lines(result: dict) -> list[str]:
    s, m = result["settings"], result["machine"]
    rate = "all at once" if not s["rate"] else f"{s['rate']:g}/s"
    lines = [f"bench api: {s['clients']} streaming clients ({rate}), prompts of {s['prompt_tokens']} tokens, "
             f"{s['max_tokens']} new each, greedy; model {s['model']} on {s['device']}; median of {s['repeat']}",
             f"machine: {m['cpu']} ({m['cpu_count']} cores), torch threads {m['torch_threads']}, "
             f"load {m['load_1m_5m_15m'][0]:.2f} at the end",
             "", f"{'':<12}{'TTFT ms p50':>12}{'p90':>8}{'p99':>8}{'ITL ms p50':>12}{'p90':>8}{'p99':>8}"
             f"{'out tok/s':>11}"]

    def cells(row: dict, ratio: bool) -> str:
        def cell(key: str, width: int) -> str:
            v = row.get(key)
            return f"{'–':>{width}}" if v is None else f"{v:>{width}.2f}" if ratio else f"{v:>{width}.1f}"
        keys = [("ttft_p50_ms", 12), ("ttft_p90_ms", 8), ("ttft_p99_ms", 8), ("itl_p50_ms", 12), ("itl_p90_ms", 8),
                ("itl_p99_ms", 8), ("output_tok_s", 11)]
        return "".join(cell(k, w) for k, w in keys)

    lines.append(f"{'in-process':<12}{cells(result['median']['in-process'], False)}")
    lines.append(f"{'http':<12}{cells(result['median']['http'], False)}")
    lines.append(f"{'http / in':<12}{cells(result['http_over_in_process'], True)}")
    lines.append("ratios: per repetition (HTTP over the in-process run next to it), then the median; "
                 "tok/s below 1 and latencies above 1 are what HTTP costs")
    return lines
