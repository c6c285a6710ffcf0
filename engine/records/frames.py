"""Compressed recordings: the JSON lines of a recording in frames, each frame one xz stream.

A long run's records repeat themselves (every live request's view, step after step), so a frame
of consecutive records compresses well (a 1,500-request run: ~17x with frames of 32 records at
preset 1, against ~5x for a record alone). The frames together are one ordinary .xz file (xz
reads concatenated streams): `xz -dc run.jsonl.xz` gives the plain recording. A frame starts where
the one before it ended, so a reader learns where each step's frame lies as it reads, and reads
a past step back by decompressing that frame alone. The header line is a frame of its own, so
opening a recording decompresses one small frame.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from typing import IO

XZ_MAGIC = b"\xfd7zXZ\x00"
FRAME_RECORDS = 32  # records a frame holds: the writer's memory, and the steps a killed run loses
PRESET = 1  # xz's fast presets compress these records nearly as well as its slow ones
MAX_FRAME_BYTES = 512 << 20  # a frame's decompressed size; more is a hostile file, not a recording
READ_BYTES = 1 << 16


class FrameError(ValueError):
    """A frame that is not a whole xz stream of JSON lines."""


def is_framed(head: bytes) -> bool:
    return head.startswith(XZ_MAGIC)


def compress(lines: list[bytes]) -> bytes:
    """One frame of lines (each ending with a newline)."""
    return lzma.compress(b"".join(lines), format=lzma.FORMAT_XZ, preset=PRESET)


def decompress(frame: bytes) -> list[bytes]:
    """A frame's lines (each with its newline); FrameError if it is not one whole stream."""
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        data = decoder.decompress(frame, max_length=MAX_FRAME_BYTES)
    except lzma.LZMAError as exc:
        raise FrameError(f"not an xz frame ({exc})") from None
    if not decoder.eof:
        raise FrameError("a frame cut short")
    return data.splitlines(keepends=True)


def read_frames(file: IO[bytes], offset: int = 0) -> Iterator[tuple[int, int, list[bytes]]]:
    """(start, end, lines) of each whole frame from `offset` on, in file order. Stops at the end of
    the file; a last frame cut short (the writer was killed) raises FrameError("cut short"), and
    so does anything that is not an xz stream."""
    buffer = b""
    start = offset
    while True:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        out: list[bytes] = []
        size = 0
        fed = 0  # bytes of this frame handed to the decoder
        while not decoder.eof:
            if not buffer:
                buffer = file.read(READ_BYTES)
                if not buffer:
                    if fed:
                        raise FrameError("the last frame is cut short")
                    return
            try:
                chunk = decoder.decompress(buffer, max_length=MAX_FRAME_BYTES - size)
            except lzma.LZMAError as exc:
                raise FrameError(f"not an xz frame at byte {start} ({exc})") from None
            size += len(chunk)
            out.append(chunk)
            if decoder.eof:
                used = len(buffer) - len(decoder.unused_data)
                fed += used
                buffer = decoder.unused_data
            else:
                if size >= MAX_FRAME_BYTES and not decoder.needs_input:
                    raise FrameError(f"a frame at byte {start} holds more than {MAX_FRAME_BYTES >> 20} MiB")
                fed += len(buffer)
                buffer = b""
        end = start + fed
        yield start, end, b"".join(out).splitlines(keepends=True)
        start = end
