"""Newline-delimited frames off a byte stream, bounded; stream errors translated."""

from __future__ import annotations

import ssl

import anyio
import anyio.abc

from durable_tq import errors
from durable_tq.servers.tcp.constants import (
    READ_CHUNK,
)


class PeerGone(Exception):
    """The connection broke or was closed under us (anyio stream errors, translated)."""


STREAM_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    ssl.SSLError,
    OSError,
)


class FrameReader:
    """Splits a byte stream into lines of at most ``max_bytes`` bytes (the ``\\n`` not counted).

    Memory stays bounded: at most ``max_bytes`` plus one chunk is ever buffered.
    """

    def __init__(self, stream: anyio.abc.ByteReceiveStream, max_bytes: int) -> None:
        self._stream = stream
        self._max_bytes = max_bytes
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline

    async def receive_line(self) -> bytes:
        """The next line without its newline.

        Raises :class:`errors.FrameTooLarge` for an over-long line, :class:`anyio.EndOfStream`
        at the end of the stream (an unfinished last line is dropped) and :class:`PeerGone`
        when the connection broke.
        """
        while True:
            index = self._buffer.find(b"\n", self._scanned)
            if index >= 0:
                if index > self._max_bytes:
                    raise self._too_large()
                line = bytes(self._buffer[:index])
                del self._buffer[: index + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buffer)
            if self._scanned > self._max_bytes:
                raise self._too_large()
            try:
                chunk = await self._stream.receive(READ_CHUNK)
            except anyio.EndOfStream:
                raise
            except STREAM_ERRORS as exc:
                raise PeerGone(f"{type(exc).__name__}: {exc}") from exc
            self._buffer.extend(chunk)

    def _too_large(self) -> errors.FrameTooLarge:
        self._buffer.clear()
        return errors.FrameTooLarge(f"frame is longer than max_frame_bytes ({self._max_bytes})")
