"""Just enough HTTP/1.1 over asyncio streams for the demo apps and the traffic generator.

The demo apps must be real HTTP peers of the proxy (keep-alive, content-length
and chunked bodies, proxy-form requests) without pulling in a framework, and
without sharing code with the proxy they are meant to exercise. This is a
deliberately small, separate implementation: apps in the real world are not
written with the proxy's parser either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from glassmesh.stopping import cancel_and_wait

MAX_HEAD = 64 * 1024


class ProtocolError(Exception):
    """The peer sent something this small implementation will not accept."""


Headers = list[tuple[str, str]]  # names lowercased, order kept


def header(headers: Headers, name: str) -> str | None:
    name = name.lower()
    for k, v in headers:
        if k == name:
            return v
    return None


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: Headers
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return header(self.headers, name)


@dataclass
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    reason: str = ""

    def header(self, name: str) -> str | None:
        return header(self.headers, name)


def _parse_headers(lines: list[bytes]) -> Headers:
    out: Headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(f"bad header line {line[:80]!r}")
        out.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    return out


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """The head's lines, or None on a clean EOF before any byte."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise ProtocolError("connection closed inside a message head") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("message head too large") from None
    return head[:-4].split(b"\r\n")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("bad chunk terminator")


async def _read_body(reader: asyncio.StreamReader, headers: Headers, *, until_eof: bool) -> bytes:
    te = header(headers, "transfer-encoding")
    if te is not None:
        if te.lower() != "chunked":
            raise ProtocolError(f"unsupported transfer-encoding {te!r}")
        return await _read_chunked(reader)
    cl = header(headers, "content-length")
    if cl is not None:
        return await reader.readexactly(int(cl))
    return await reader.read() if until_eof else b""


def _wants_close(version: str, headers: Headers) -> bool:
    conn = (header(headers, "connection") or "").lower()
    if "close" in conn:
        return True
    return version == "HTTP/1.0" and "keep-alive" not in conn


def encode_response(resp: Response, *, head_only: bool = False, close: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {resp.reason or _REASONS.get(resp.status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in resp.headers]
    if resp.status not in (204, 304):
        lines.append(f"content-length: {len(resp.body)}")
    if close:
        lines.append("connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only or resp.status in (204, 304) else head + resp.body


_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 502: "Bad Gateway"}

Handler = Callable[[Request], Awaitable[Response]]


class Drain:
    """A graceful stop for one server's keep-alive connections (pass it to every serve_connection).

    After `start()`: a request being handled is answered (with `connection:
    close`); an idle connection is closed, after a short grace for a request
    already on its way; a connection accepted whose first request has not
    arrived yet gets longer. A proxy in front sees either an answer or a
    pooled connection closed before it sent anything, which it may retry
    elsewhere: stopping an instance this way loses no request.
    """

    def __init__(self, idle_grace_s: float = 0.05, fresh_grace_s: float = 1.0) -> None:
        self.idle_grace_s, self.fresh_grace_s = idle_grace_s, fresh_grace_s
        self.event = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def draining(self) -> bool:
        return self.event.is_set()

    def start(self) -> None:
        self.event.set()

    async def wait(self, timeout: float) -> int:
        """Wait for every connection to end; returns how many were still open at the deadline."""
        pending = {t for t in self.tasks if not t.done()}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        return len(pending)


async def _next_head(reader: asyncio.StreamReader, drain: Drain | None, served: int) -> list[bytes] | None:
    """The next request head; None on EOF, or when a drain closes the connection while it is idle."""
    if drain is None:
        return await _read_head(reader)
    read = asyncio.ensure_future(_read_head(reader))
    try:
        if not drain.draining:
            stop = asyncio.ensure_future(drain.event.wait())
            try:
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if read.done():
                return read.result()
        # Draining and idle: a request already on its way is still answered.
        done, _ = await asyncio.wait({read}, timeout=drain.idle_grace_s if served else drain.fresh_grace_s)
        return read.result() if done else None
    finally:
        await cancel_and_wait(read)  # a cancellation of this connection's task is not swallowed


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler,
                           drain: Drain | None = None) -> None:
    """Answer requests on one connection until the client closes it (keep-alive), or a drain ends it."""
    task = asyncio.current_task()
    if drain is not None and task is not None:
        drain.tasks.add(task)  # type: ignore[arg-type]
        task.add_done_callback(drain.tasks.discard)
    served = 0
    try:
        while True:
            lines = await _next_head(reader, drain, served)
            if lines is None:
                return
            parts = lines[0].decode("latin-1").split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                raise ProtocolError(f"bad request line {lines[0][:80]!r}")
            method, target, version = parts
            headers = _parse_headers(lines[1:])
            if (header(headers, "expect") or "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await _read_body(reader, headers, until_eof=False)
            req = Request(method, target, version, headers, body)
            try:
                resp = await handler(req)
            except Exception as e:  # an app bug answers 500, it does not drop the connection
                resp = Response(500, [("content-type", "text/plain")], f"app error: {e!r}\n".encode())
            close = _wants_close(version, headers) or (drain is not None and drain.draining)
            writer.write(encode_response(resp, head_only=method == "HEAD", close=close))
            await writer.drain()
            served += 1
            if close:
                return
    except (ProtocolError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        with contextlib.suppress(Exception):
            writer.write(encode_response(Response(400, body=f"{e}\n".encode()), close=True))
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    except asyncio.CancelledError:
        # The server is shutting down; ending quietly keeps asyncio from logging
        # every idle keep-alive connection as an error.
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class Connection:
    """One keep-alive client connection, (re)opened when needed. Not for concurrent use."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.opened = 0  # connections opened so far (shows keep-alive at work)

    async def request(
        self, method: str, target: str, headers: Headers | None = None, body: bytes = b""
    ) -> Response:
        """Send one request; a GET/HEAD that finds a stale pooled connection is retried once."""
        reused = self._writer is not None
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(method, target, headers or [], body)
        except (ConnectionError, asyncio.IncompleteReadError, ProtocolError) as e:
            self.close()
            stale = reused and (isinstance(e, ConnectionError | asyncio.IncompleteReadError))
            if stale and method in ("GET", "HEAD"):
                async with asyncio.timeout(self.timeout):
                    return await self._exchange(method, target, headers or [], body)
            raise
        except BaseException:
            self.close()
            raise

    async def _exchange(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
        assert self._reader is not None
        lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()
        head = await _read_head(self._reader)
        if head is None:
            raise ConnectionResetError("connection closed before a response")
        while True:
            status_parts = head[0].decode("latin-1").split(" ", 2)
            if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/1."):
                raise ProtocolError(f"bad status line {head[0][:80]!r}")
            status = int(status_parts[1])
            if status >= 200 or status == 101:
                break
            head = await _read_head(self._reader)  # skip 1xx interim responses
            if head is None:
                raise ConnectionResetError("connection closed before a response")
        rheaders = _parse_headers(head[1:])
        no_body = method == "HEAD" or status in (204, 304) or status < 200
        resp_body = b"" if no_body else await _read_body(self._reader, rheaders, until_eof=True)
        resp = Response(status, rheaders, resp_body, status_parts[2] if len(status_parts) > 2 else "")
        framed = no_body or rheaders and (
            header(rheaders, "content-length") is not None or header(rheaders, "transfer-encoding") is not None
        )
        if _wants_close(status_parts[0], rheaders) or not framed:
            self.close()
        return resp

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Pool:
    """Keep-alive connections to one address, one per concurrent request, reused afterwards."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, max_idle: int = 16) -> None:
        self.host, self.port, self.timeout, self.max_idle = host, port, timeout, max_idle
        self._idle: list[Connection] = []

    async def request(
        self, method: str, target: str, headers: Headers | None = None, body: bytes = b""
    ) -> Response:
        conn = self._idle.pop() if self._idle else Connection(self.host, self.port, timeout=self.timeout)
        try:
            resp = await conn.request(method, target, headers, body)
        except BaseException:
            conn.close()
            raise
        if conn._writer is not None and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return resp

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def split_hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)
