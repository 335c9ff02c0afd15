"""Offset-addressable output buffers, the shape of Modal's stdio read streams.

The client reads exec and entrypoint output as streams that it may reopen at any byte offset
(after a transient error, an idle channel release, or from a second reader), so output is kept
whole and served from the requested offset; a stream ends once the writer reached EOF and the
reader has everything.  Chunks are never empty: the client rejects empty messages.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .rpc_error import RpcError

CHUNK = 64 * 1024


class OutputBuffer:
    """All bytes written to one fd, plus an EOF flag; readers wait for more or for EOF."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._eof = False
        self._changed = asyncio.Event()

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def eof(self) -> bool:
        return self._eof

    def append(self, data: bytes) -> None:
        if data:
            self._data.extend(data)
            self._wake()

    def close(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def getvalue(self) -> bytes:
        return bytes(self._data)

    def read(self, offset: int, size: int = CHUNK) -> bytes:
        """Up to ``size`` bytes from ``offset`` (what is there now)."""
        return bytes(self._data[offset : offset + size])

    async def read_from(self, offset: int) -> AsyncIterator[bytes]:
        """Yield non-empty chunks from ``offset`` until EOF has been reached and served."""
        offset = max(0, offset)
        while True:
            if offset < len(self._data):
                chunk = bytes(self._data[offset : offset + CHUNK])
                offset += len(chunk)
                yield chunk
                continue
            if self._eof:
                return
            await self._changed.wait()


async def follow_file(
    path: Path,
    offset: int,
    finished: Callable[[], bool],
    *,
    poll_interval: float = 0.02,
    deadline: float | None = None,
) -> AsyncIterator[bytes]:
    """Yield non-empty chunks of a file another process appends to, from ``offset``.

    Ends when ``finished()`` is true and a last read found nothing new (the writer, the
    sandbox's entrypoint, has exited, so the file is complete), or, with ``deadline`` (a
    ``time.monotonic()`` value), when it passes with nothing new.  A missing file is empty.
    """
    offset = max(0, offset)
    while True:
        done = finished()  # sample before reading, so the final read sees everything
        chunk = read_at(path, offset)  # a local regular file: fast enough inline
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if done or (deadline is not None and time.monotonic() >= deadline):
            return
        await asyncio.sleep(poll_interval)


async def follow_buffer(
    buffer: OutputBuffer, offset: int, *, deadline: float, poll_interval: float = 0.02
) -> AsyncIterator[bytes]:
    """Like :func:`follow_file`, for a buffer: chunks from ``offset`` until its EOF has been
    served or ``deadline`` (``time.monotonic()``) passes with nothing new."""
    offset = max(0, offset)
    while True:
        chunk = buffer.read(offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if buffer.eof or time.monotonic() >= deadline:
            return
        await asyncio.sleep(poll_interval)


def read_at(path: Path, offset: int, size: int = CHUNK) -> bytes:
    """Up to ``size`` bytes of ``path`` from ``offset`` (a missing file is empty)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def unwritten(data: bytes, offset: int, written: int) -> bytes:
    """The part of a stdin write placed at byte ``offset`` that is not written yet (a client
    retrying a write sends it again at the same offset); a write past the end is refused."""
    if offset > written:
        raise RpcError(
            "INVALID_ARGUMENT",
            f"stdin write at offset {offset} leaves a gap: "
            f"only {written} bytes were written so far",
        )
    return data[written - offset :]
