"""Pieces for the `cbtui serve` and `compare` tests: a browser-like client of the textual-serve server
(HTTP for the page, then its websocket, as the page's script does), the processes of a server's group,
and a help screen as text."""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
from pathlib import Path

from rich.console import Console

ANSI = re.compile(rb"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrowserClient:
    """What a browser tab does: load the page, open the websocket it names, say its size, and
    show what the app sends (here: kept as text without the escape sequences)."""

    def __init__(self, session, url: str, width: int = 100, height: int = 30):
        self.session, self.url, self.width, self.height = session, url, width, height
        self.raw = bytearray()
        self.ws = None
        self._reader: asyncio.Task | None = None

    async def open(self) -> str:
        async with self.session.get(self.url + "/") as page:
            assert page.status == 200
            html = await page.text()
        ws_url = re.search(r'ws://[^"\']+/ws', html).group(0)
        self.ws = await self.session.ws_connect(f"{ws_url}?width={self.width}&height={self.height}")
        await self.ws.send_json(["resize", {"width": self.width, "height": self.height}])
        self._reader = asyncio.create_task(self._read())
        return html

    async def _read(self) -> None:
        async for message in self.ws:
            if isinstance(message.data, bytes):
                self.raw += message.data

    def text(self, since: int = 0) -> str:
        return ANSI.sub(b"", bytes(self.raw[since:])).decode("utf-8", "replace")

    async def wait_for(self, words: str, since: int = 0, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while words not in self.text(since):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{words!r} never reached the browser; it saw: {self.text(since)[-400:]!r}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()


def group_processes(pgid: int) -> dict[int, str]:
    """pid -> command line of every process in process group `pgid` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
    return found


def maps_torch(pid: int) -> bool:
    """Whether the process has torch's library loaded (what any engine needs)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def help_text(app) -> str:
    """The help screen as text: its paragraphs and its table of keys."""
    console = Console(width=120, record=True, file=io.StringIO())
    for widget in app.screen.query("Static"):
        console.print(widget.content)
    return console.export_text()
