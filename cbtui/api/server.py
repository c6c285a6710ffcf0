"""`cbtui api`'s lifecycle: the engine thread, the HTTP server, and what the terminal shows.

One EngineController steps the engine (wrapped as a ServedEngine, so each record reaches the
clients): the dashboard's, or with --headless one that logs a line per step. uvicorn serves on a
socket bound before anything starts (a taken port is one line and exit 2, and --port 0 picks a
free one); with the dashboard it runs in a thread of its own and logs nothing (the screen is the
dashboard's), headless it runs on the main thread and Ctrl+C stops both.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from engine.records import StepRecord
from engine.records.text import visible

from ..run.controller import MAX_SPEED, EngineController, EngineStatus
from ..run.headless import step_line
from .hub import EngineHub, ServedEngine
from .routes import ServedModel

GRACEFUL_S = 2  # on Ctrl+C, open streams get this long before the server closes them
DEFAULT_MAX_REQUESTS = 512


class ApiError(Exception):
    """The server cannot start as asked; the message says why and what to do."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now: a bad host or a taken port fails before the engine starts."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ApiError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ApiError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); give another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(sock: socket.socket) -> str:
    """The address clients use: bound to every interface (0.0.0.0, ::), this machine's name, which
    is what a student's laptop can reach, not 0.0.0.0."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def served_model(engine: Any) -> ServedModel:
    """Read from the engine before its thread starts; the routes never touch it afterwards."""
    spec = engine.runner.spec
    # the name clients send is the --model setting as given (smollm2, tiny, a path), as vLLM serves
    # a model under the name it was started with; the header's display name is accepted too
    return ServedModel(name=str(engine.config.llm.name), aliases=(engine.header().model,),
                       tokenizer=engine.tokenizer, context=spec.max_context,
                       vocab_size=spec.vocab_size, stop_ids=frozenset(engine.runner.stop_ids),
                       created=int(time.time()))


def api_scenario(scenario: Any, url: str) -> Any:
    """The scenario as the dashboard shows it: its settings, no workload (the clients are), and a
    help text that says where to send requests."""
    about = (f"An OpenAI-compatible server at {url}: requests from clients (curl, the openai package, a "
             f"load generator) join this batch between steps, and their tokens are the ones each step "
             f"samples. Space pauses every stream, n sends each running client one more token, x aborts "
             f"the selected request (its client gets finish_reason 'abort').")
    return replace(scenario, requests=[], title=f"cbtui api · {url}", description=about,
                   question="What does your traffic do to the batch?")


def uvicorn_server(app: Any, hub: EngineHub, quiet: bool) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            # Open requests end now, each with a clear error (a 503, or an error event and [DONE]),
            # rather than waiting out the grace period and being cancelled mid-answer.
            hub.end_all("the server is shutting down")
            await super().shutdown(sockets)

    config = uvicorn.Config(app, log_level="critical" if quiet else "warning", access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_S, lifespan="off")
    return Server(config)


def serve_headless(engine: Any, hub: EngineHub, app: Any, sock: socket.socket,
                   observers: list[Callable[[StepRecord], None]], speed: float = MAX_SPEED) -> int:
    """One line per step on stdout while uvicorn serves on this thread; Ctrl+C stops both. 0, 130
    after Ctrl+C (SIGINT), 1 when the engine failed."""
    failed: list[str] = []
    server = uvicorn_server(app, hub, quiet=False)

    def on_record(record: StepRecord) -> None:
        for observe in observers:
            observe(record)
        print(step_line(record), flush=True)

    def on_status(status: EngineStatus) -> None:
        if status.kind == "failed":
            failed.append(status.message)
            print(f"cbtui api: error: the engine stopped: {visible(status.message)}", file=sys.stderr, flush=True)
            server.should_exit = True

    controller = EngineController(ServedEngine(engine, hub), on_record, on_status, speed=speed)
    hub.controller = controller
    controller.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the Ctrl+C it caught again once it has shut down
        return 130
    finally:
        controller.stop()
        engine.close()
    return 1 if failed else 0


class ServerThread:
    """uvicorn on a thread of its own (beside the dashboard), stopped when the dashboard quits."""

    def __init__(self, app: Any, hub: EngineHub, sock: socket.socket):
        self.server = uvicorn_server(app, hub, quiet=True)
        self.thread = threading.Thread(target=self.server.run, kwargs=dict(sockets=[sock]), name="cbtui-api",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(GRACEFUL_S + 1)


def serve_dashboard(scenario: Any, engine: Any, hub: EngineHub, app: Any, sock: socket.socket,
                    run_options: dict, rebuild_engine: Callable[[], Any]) -> int:
    """The dashboard drives the one controller; clients' requests show as they join. `r` rebuilds
    the engine: open streams end with an error saying so."""
    from ..apps.dashboard import run_dashboard

    def rebuild() -> ServedEngine:
        hub.end_all("the run was restarted on the dashboard (r); send the request again")
        served = ServedEngine(rebuild_engine(), hub)
        hub.failure = None  # a new engine: a failed one's refusal ends with it
        return served

    def make_app(scenario: Any, served: Any, rebuild: Any) -> Any:
        from .dashboard import ApiDashboard

        dashboard = ApiDashboard(scenario, served, rebuild=rebuild, **run_options)
        hub.controller = dashboard.controller
        return dashboard

    server = ServerThread(app, hub, sock)
    server.start()
    try:
        return run_dashboard(scenario, ServedEngine(engine, hub), rebuild=rebuild, app_factory=make_app)
    finally:
        server.stop()


def default_scenario() -> Any:
    """`cbtui api` without a SCENARIO: the engine's defaults (tiny, paged KV), no workload."""
    from scenarios.loader import Scenario

    return Scenario(name="api", path=Path("api"), title="cbtui api", description="", question="",
                    engine={"model": "tiny"})
