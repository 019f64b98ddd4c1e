"""The asyncio side of refusing an HTTP/2 client (the frames are in protocols/http2.py).

A client connection whose first bytes are the HTTP/2 preface leaves the HTTP/1.1
code here: this protocol answers its first request with why the mesh cannot carry it,
then ends the connection. Nothing of this runs for an HTTP/1.1 request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from glassmesh.protocols.http2 import Refusal

LINGER_S = 2.0  # after the answer, how long the client's last frames are read (and dropped) before closing


class Http2Refuser(asyncio.Protocol):
    """Owns a client connection from its HTTP/2 preface on; closes it after the answer or after `timeout_s`."""

    def __init__(self, transport: Any, refusal: Refusal, timeout_s: float) -> None:
        self.transport = transport
        self.refusal = refusal
        self.loop = asyncio.get_running_loop()
        self.timer = self.loop.call_later(timeout_s, self._expire)
        transport.write(refusal.start())

    def data_received(self, data: bytes) -> None:
        if self.refusal.done:
            return  # lingering: the client's request body or acknowledgements, dropped
        out = self.refusal.feed(data)
        if out:
            self.transport.write(out)
        if self.refusal.done:
            self._answered()

    def _answered(self) -> None:
        """Half-close and read on for a moment: closing with the client's frames unread would reset
        the connection, and a reset can destroy the answer before the client reads it."""
        self.timer.cancel()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.timer = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def _expire(self) -> None:
        if not self.transport.is_closing():
            if not self.refusal.done:
                self.transport.write(self.refusal.goaway())
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    def connection_lost(self, exc: BaseException | None) -> None:
        self.timer.cancel()
