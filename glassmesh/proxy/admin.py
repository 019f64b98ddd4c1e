"""The admin port: metrics, the snapshot in force, health and readiness.

Deliberately tiny and separate from the data path: it answers GETs, one per
connection, and is served by the process that can see every worker.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import httptools

Handler = Callable[[], Awaitable[tuple[int, str, bytes]]]
# A worker's answers to its supervisor's asks (proxy/asks.py PROCESS_ROUTES): (route, params) -> JSON-able.
Process = Callable[[str, dict[str, str]], Awaitable[Any]]


class AdminProtocol(asyncio.Protocol):
    """One admin request per connection.

    `process` is given only on a worker's private unix socket (0600, in a
    0700 directory): the per-process routes behind the ask channel (a tap,
    the ring of recent requests) carry request data, so they are never
    served on the TCP admin port, which anyone on the host can reach.
    """

    def __init__(self, routes: dict[str, Handler], process: Process | None = None) -> None:
        self.routes = routes
        self.process = process
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
        url = httptools.parse_url(self.url) if self.url else None
        path = url.path.decode("latin-1") if url is not None else "/"
        handler = self.routes.get(path)
        if self.process is not None and method == b"GET" and path.startswith("/process/"):
            query = (url.query or b"").decode("latin-1") if url is not None else ""
            params = dict(urllib.parse.parse_qsl(query))
            asyncio.get_running_loop().create_task(self._run_process(path[len("/process/"):], params))
        elif method not in (b"GET", b"HEAD"):
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

    async def _run_process(self, name: str, params: dict[str, str]) -> None:
        assert self.process is not None
        try:
            body = json.dumps(await self.process(name, params)).encode()
            status = 200
        except KeyError:
            status, body = 404, json.dumps({"error": f"no process route {name!r}"}).encode()
        except Exception as e:  # noqa: BLE001 - an admin page must never take the proxy down
            status, body = 500, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()
        self._send(status, "application/json", body)

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
