"""Opening the files of a checkpoint directory we did not write: only regular files, of bounded size,
never blocking. A FIFO would hang a plain open() and /dev/zero a plain read(); a library handed either
(safetensors, tokenizers) hangs the same way, so every file is checked here before it is read or
passed on. Links are followed (a Hugging Face cache snapshot is made of them) and their target checked.

Every problem is one CheckpointError line naming the file and saying what to do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded: the message names the file (and tensor)."""


MAX_JSON_BYTES = 64 << 20  # config.json, tokenizer_config.json, an index file: kilobytes in real models
MAX_TOKENIZER_BYTES = 512 << 20  # tokenizer.json: tens of megabytes for the largest vocabularies
MAX_TEMPLATE_BYTES = 4 << 20  # chat_template.jinja: kilobytes

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _open(path: Path, missing: str) -> int:
    """A read-only descriptor of `path`, a regular file; never waits for a FIFO's writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; {missing}") from None
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied; make it readable (chmod a+r) or run as its owner") from None
    except OSError as exc:  # a link loop, a name too long, an I/O error
        raise CheckpointError(f"{path}: cannot open it ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _KINDS if test(mode)), "not a plain file")
        raise CheckpointError(f"{path}: is {kind}, not a regular file; a checkpoint's files must be regular files")
    return fd


def regular_file(path: Path, limit: int | None = None, missing: str = "the checkpoint needs it") -> int:
    """The size of `path` once it is known to be a readable regular file (of at most `limit` bytes),
    before it is handed to a library that would block on anything else."""
    fd = _open(path, missing)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if limit is not None and size > limit:
        raise CheckpointError(f"{path}: {size} bytes, more than the {limit >> 20} MiB such a file can be; "
                              f"is it the right file?")
    return size


def read_text(path: Path, limit: int, missing: str = "the checkpoint needs it") -> str:
    """A regular file's text (UTF-8), refused past `limit` bytes."""
    fd = _open(path, missing)
    try:
        with os.fdopen(fd, "rb", closefd=True) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise CheckpointError(f"{path}: more than the {limit >> 20} MiB such a file can be; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}); is it the right file?") from None
