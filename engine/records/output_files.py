"""Files the exports write (metrics, traces): the path checked before a run, the file written whole.

A file is written beside its target under a temporary name and renamed over it only when complete,
so a failure (a full disk, a value JSON cannot hold) never leaves a half-written file where a good
one was.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


class OutputFileError(ValueError):
    """An output file could not be written; the message names the path and the reason."""


def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...], what: str = "metrics") -> Path:
    """The path as a Path if a `what` file (metrics, trace) can be written there; OutputFileError
    saying why not."""
    if not str(path).strip():
        raise OutputFileError(f"{what} output path is empty")
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        raise OutputFileError(f"{p}: unknown {what} format {p.suffix or '(no suffix)'!r}; "
                              f"use a name ending in {' or '.join(suffixes)}")
    if p.is_dir():
        raise OutputFileError(f"{p}: is a directory; give a file name")
    parent = p.parent
    if not parent.exists():
        raise OutputFileError(f"{p}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputFileError(f"{p}: {parent} is not a directory")
    return p


def write_atomically(path: Path, write: Callable[[TextIO], object]) -> None:
    """write(file) into a temporary file beside `path`, then renames it over `path`. On any failure
    the temporary file is removed and `path` is left as it was; an OSError becomes OutputFileError."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputFileError(f"{path}: cannot write ({exc.strerror or exc})") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()  # gone already after a successful rename
