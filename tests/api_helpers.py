"""Pieces for the `cbtui api` tests: the server as a real process on 127.0.0.1 (a free port it
picks itself, --port 0), bounded in time and always stopped; and raw HTTP for what a client
library hides (a body too large, broken JSON, a client that hangs up mid-stream)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90  # torch's import and the engine's build on a busy 2-core machine


class ApiProcess:
    """`cbtui api --headless --port 0 ARGS`, its step log kept; `with` stops it (SIGINT, then kill)."""

    def __init__(self, *args: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "cbtui", "api", "--headless", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT, start_new_session=True)
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._ready = threading.Event()
        self.url = ""
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True).start()
        if not self._ready.wait(START_TIMEOUT_S):
            self.stop()
            raise AssertionError(f"cbtui api did not start: {''.join(self.errors)[-2000:]}")
        if not self.url:
            self.stop()
            raise AssertionError(f"cbtui api exited at start: {''.join(self.errors)[-2000:]}")

    def _read(self, pipe, into: list[str]) -> None:
        for line in pipe:
            into.append(line)
            found = re.search(r"at (http://\S+/v1)", line)
            if found and not self.url:
                self.url = found.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").removesuffix("/v1").rsplit(":", 1)
        return host, int(port)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def raw_request(host_port: tuple[str, int], method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict | None, bytes]:
    """One HTTP/1.1 request on a fresh socket: status, JSON body (None if not JSON), raw body."""
    head = {"Host": f"{host_port[0]}:{host_port[1]}", "Content-Length": str(len(body)), "Connection": "close",
            "Content-Type": "application/json", **(headers or {})}
    data = f"{method} {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode()
    with socket.create_connection(host_port, timeout=timeout) as sock:
        sock.sendall(data + b"\r\n" + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    head, _, payload = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _dechunked(payload)
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    return int(status_line.split()[1]), parsed, payload


def _dechunked(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + data[:n], data[n + 2:]
    return out


def wait_for(predicate, timeout: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
