"""The admin port: metrics, the snapshot in force, health and readiness.

Deliberately tiny and separate from the data path: it answers GETs, one per
connection, and is served by the process that can see every worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]


class AdminProtocol(asyncio.Protocol):
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.transport: Any = None
        self.size = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > 16384:
            self._send(431, "text/plain", b"request too large\n")
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(400, "text/plain", b"bad request\n")

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = httptools.parse_url(self.url).path.decode("latin-1") if self.url else "/"
        handler = self.routes.get(path)
        if method not in (b"GET", b"HEAD"):
            self._send(405, "text/plain", b"only GET\n")
        elif handler is None:
            body = json.dumps({"error": "not_found", "paths": sorted(self.routes)}).encode() + b"\n"
            self._send(404, "application/json", body)
        else:
            asyncio.get_running_loop().create_task(self._run(handler, method == b"HEAD"))

    async def _run(self, handler: Handler, head: bool) -> None:
        try:
            status, ctype, body = await handler()
        except Exception as e:  # an admin page must never take the proxy down
            status, ctype, body = 500, "text/plain", f"admin error: {e}\n".encode()
        self._send(status, ctype, b"" if head else body, len(body))

    def _send(self, status: int, ctype: str, body: bytes, length: int | None = None) -> None:
        if self.transport.is_closing():
            return
        head = (
            f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body) if length is None else length}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def json_body(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode() + b"\n"
