"""The web server of `cbtui serve`, in a process of its own: textual-serve gives each browser tab
its own read-only viewer process (`python -m cbtui.classroom.watch DIR`), which follows the presenter's
recording; no tab starts an engine.

    python -m cbtui.classroom.serve_web DIR HOST PORT PUBLIC_URL TITLE
"""

from __future__ import annotations

import shlex
import sys


def main(argv: list[str]) -> None:
    directory, host, port, public_url, title = argv
    from textual_serve.server import Server

    command = f"{shlex.quote(sys.executable)} -m cbtui.classroom.watch {shlex.quote(directory)}"
    Server(command, host=host, port=int(port), title=f"cbtui: {title}", public_url=public_url).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
