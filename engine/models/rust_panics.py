"""A panic in a Rust extension (the `tokenizers` library) as one error line.

pyo3 turns a Rust panic into `PanicException`, a BaseException, so `except Exception` lets it through
as a traceback; and Rust's panic hook writes its own lines (a backtrace under RUST_BACKTRACE) straight
to file descriptor 2 before Python sees anything. A tokenizer.json written to panic (a pre-tokenizer
regex that backtracks past Oniguruma's limit) would print a screenful. Here the call runs with fd 2
sent to a temporary file: nothing printed there is lost when the call succeeds (it is written back),
and when it panics the hook's lines are dropped and the panic becomes `error(message (panic))`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

_redirect = threading.Lock()  # fd 2 is per process: one redirection at a time


def is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"  # pyo3_runtime's class is not importable by name


@contextlib.contextmanager
def rust_panics_as(error: type[Exception], message: str) -> Iterator[None]:
    with _redirect, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        panicked = None
        try:
            yield
        except BaseException as exc:
            if not is_panic(exc):
                raise
            panicked = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if panicked is None:  # give back whatever else was written meanwhile
                held.seek(0)
                written = held.read()
                if written:
                    os.write(2, written)
    if panicked is not None:
        reason = (str(panicked).strip().splitlines() or ["a panic"])[0][:160]
        raise error(f"{message} ({reason})") from None
