"""The web server of `cbtui serve`, in a process of its own: textual-serve gives each browser tab
its own read-only viewer process (`python -m cbtui.classroom.watch DIR`), which follows the presenter's
recording; no tab starts an engine.

    python -m cbtui.classroom.serve_web DIR HOST PORT PUBLIC_URL TITLE PARENT MAX_VIEWERS TEMPORARY

It lives no longer than the presenter (PARENT): when that process dies, however (kill -9 included),
this one removes the temporary session folder (TEMPORARY is 1: the presenter made it) and ends its
process group, itself and every viewer it started, as shard workers end with their driver. At most
MAX_VIEWERS browsers watch at once (each viewer is a process of ~55 MB); the next one gets a page
that says the class is full, with status 503, and no process.

Everything the page loads comes from this server: textual-serve's page asks Google's font service for
Roboto Mono, which an offline classroom cannot reach, so the page is served with that link replaced by
the same font from textual-serve's own static folder (LocalFonts).
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from engine.profiling.memory import available_ram_bytes

PARENT_POLL_S = 0.25
TEMPORARY_PREFIX = "cbtui-serve-"  # what serve.py's temporary folders are called: the only ones removed here
VIEWER_BYTES = 64 << 20  # one browser's viewer process, with room (measured: ~55 MB)
MAX_DEFAULT_VIEWERS = 200


def default_max_viewers(available: int | None = None) -> int:
    """As many viewers as half the memory available now holds (at least 1, at most 200)."""
    if available is None:
        available = available_memory()
    return max(1, min(MAX_DEFAULT_VIEWERS, available // 2 // VIEWER_BYTES))


def available_memory() -> int:
    available = available_ram_bytes()
    return available if available is not None else VIEWER_BYTES * 2 * 8


def full_page(title: str, watching: int) -> str:
    """What the browser past the limit sees: polite, and no viewer process started for it."""
    title = html.escape(title)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}: the class is full</title>"
            f"<meta http-equiv='refresh' content='30'></head><body style='font-family: sans-serif; margin: 3em'>"
            f"<h1>{title}</h1><p>Sorry: {watching} browsers are watching this run already, as many as this "
            f"machine serves at once. This page tries again every 30 seconds; a seat frees when someone "
            f"closes their tab.</p><p>Or ask the presenter to watch from a terminal "
            f"(<code>cbtui watch</code>) or for a larger <code>--max-viewers</code>.</p></body></html>")


EXTERNAL_LINK = re.compile(r"<link\b[^>]*\bhref=\"(?:https?:)?//[^\"]*\"[^>]*>", re.IGNORECASE)
LOCAL_FONTS = """<style>
      @font-face { font-family: "Roboto Mono"; font-style: normal; font-weight: 100 700;
        src: url("{{ config.static.url }}fonts/RobotoMono-VariableFont_wght.ttf") format("truetype"); }
      @font-face { font-family: "Roboto Mono"; font-style: italic; font-weight: 100 700;
        src: url("{{ config.static.url }}fonts/RobotoMono-Italic-VariableFont_wght.ttf") format("truetype"); }
    </style>
  </head>"""


def local_page(template: str) -> str:
    """textual-serve's page template with every stylesheet from another site dropped and its font,
    Roboto Mono, loaded from the server's own static folder instead."""
    return EXTERNAL_LINK.sub("", template).replace("</head>", LOCAL_FONTS, 1)


def local_fonts_loader(templates: Path):
    import jinja2

    class LocalFonts(jinja2.FileSystemLoader):
        def get_source(self, environment, template):
            source, filename, uptodate = super().get_source(environment, template)
            return local_page(source), filename, uptodate

    return LocalFonts(templates)


def die_with_parent(parent: int, directory: str, temporary: bool) -> None:
    """Ends this server and its viewers (its process group) soon after `parent` dies, however it dies:
    a thread that watches for being re-parented (as engine/distributed/worker.py does)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        if temporary and Path(directory).name.startswith(TEMPORARY_PREFIX):
            shutil.rmtree(directory, ignore_errors=True)
        os.killpg(0, signal.SIGKILL)  # our own group: this server, its shells and viewers

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def make_server(command: str, host: str, port: int, title: str, public_url: str, max_viewers: int):
    import aiohttp_jinja2
    from aiohttp import web
    from textual_serve.server import Server

    class ClassServer(Server):
        """textual-serve's server with a limit on the browsers that watch at once, and a page that
        loads nothing from other sites."""

        watching = 0

        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            aiohttp_jinja2.setup(app, loader=local_fonts_loader(self.templates_path))
            return app

        def _full(self) -> web.Response:
            return web.Response(status=503, text=full_page(title, self.watching), content_type="text/html",
                                headers={"Retry-After": "30"})

        async def handle_index(self, request: web.Request):
            if self.watching >= max_viewers:
                return self._full()
            return await super().handle_index(request)

        async def handle_websocket(self, request: web.Request):
            if self.watching >= max_viewers:  # (one event loop: the check and the count are one step)
                return self._full()
            self.watching += 1
            try:
                return await super().handle_websocket(request)
            finally:
                self.watching -= 1

    return ClassServer(command, host=host, port=port, title=f"cbtui: {title}", public_url=public_url)


def main(argv: list[str]) -> None:
    directory, host, port, public_url, title, parent, max_viewers, temporary = argv
    die_with_parent(int(parent), directory, temporary == "1")
    command = f"{shlex.quote(sys.executable)} -m cbtui.classroom.watch {shlex.quote(directory)}"
    make_server(command, host, int(port), title, public_url, int(max_viewers)).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
