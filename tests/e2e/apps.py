"""Test apps for the end-to-end suite, run as subprocesses: an HTTP echo app and a TCP echo/sink.

They are deliberately written on raw asyncio streams, with their own small
HTTP/1.1 parser, so that what the app reports is exactly what reached it over
the wire (every header, the body's length and sha256, whether it sent a 100
Continue), independent of the proxy's own parser.

    python tests/e2e/apps.py http --listen 127.77.1.2:18080 --name b1
    python tests/e2e/apps.py tcp --listen 127.77.1.2:15432 [--mode echo|sink] [--banner TEXT]

HTTP endpoints (any method):
    /download?bytes=N[&chunked=1]   N bytes of `pattern_chunks`, content-length or chunked
    /endless-header?bytes=N         a response head whose one header value runs N bytes and never ends
    /status/<code>                  that status; 204 and 304 without a body
    /sleep?s=S                      200 after S seconds (at most an hour)
    /forge-error?reason=R           502 with a glassmesh-error header, as if a mesh hop had made it
    /ws                             with `Upgrade`: 101, then echo raw bytes until EOF
    /__stats                        {"requests": n, "paths": [...]}, not itself counted
    /drip?gap_ms=G&n=N              200 chunked: N chunks of "x", G ms apart (a slow stream)
    ...?delay_ms=N (any path)       wait N ms before answering; --delay-ms N: every request (a slow instance)
    ...?fail=1 (any path)           --fail-status S: answer S instead (an instance that fails)
    anything else                   JSON echo: method, path, headers, body length and sha256
Every request with `Expect: 100-continue` gets `100 Continue` before its body is read.
HEAD gets the GET response's head without a body.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import random
import signal
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

# The download pattern repeats with a period that is not a power of two, so a
# proxy that drops, repeats or reorders a buffer-sized piece changes the hash.
_PERIOD = 1_048_573
_BLOCK = random.Random(20240501).randbytes(_PERIOD)
_DOUBLE = memoryview(_BLOCK + _BLOCK)


def pattern_chunks(n: int, chunk: int = 64 * 1024) -> Iterator[memoryview]:
    """The first n bytes of the deterministic download pattern, in slices of at most `chunk`."""
    pos = 0
    while pos < n:
        size = min(chunk, n - pos, _PERIOD)
        off = pos % _PERIOD
        yield _DOUBLE[off : off + size]
        pos += size


@functools.lru_cache(maxsize=16)
def pattern_sha256(n: int) -> str:
    h = hashlib.sha256()
    for c in pattern_chunks(n, 1 << 20):
        h.update(c)
    return h.hexdigest()


# --------------------------------------------------------------------------- HTTP app

REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
    304: "Not Modified", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
    503: "Service Unavailable",
}
MAX_HEAD = 256 * 1024


class BadRequest(Exception):
    pass


class HttpApp:
    def __init__(self, name: str, delay_ms: int = 0, fail_status: int = 0) -> None:
        self.name = name
        self.delay_ms = delay_ms
        self.fail_status = fail_status
        self.requests = 0
        self.paths: list[str] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_id = self.connections
        peer = writer.get_extra_info("peername")
        n_on_conn = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await self._simple(writer, 431, b"head too large\n", close=True)
                    return
                try:
                    method, target, version, headers = parse_head(head)
                except BadRequest as e:
                    print(f"[{self.name}] bad request: {e}", flush=True)
                    await self._simple(writer, 400, f"{e}\n".encode(), close=True)
                    return
                path = urlsplit(target).path if not target.startswith("/") else target.split("?", 1)[0]
                if path != "/__stats":
                    self.requests += 1
                    self.paths.append(target)
                    del self.paths[:-200]
                n_on_conn += 1
                print(f"[{self.name}] conn={conn_id} #{n_on_conn} {method} {target} {version}", flush=True)
                keep = await self.handle(
                    reader, writer, method, target, path, version, headers,
                    {"conn": conn_id, "conn_requests": n_on_conn, "peer": f"{peer[0]}:{peer[1]}"},
                )
                await writer.drain()
                if not keep:
                    return
        except (OSError, BadRequest, ValueError, asyncio.IncompleteReadError) as e:
            print(f"[{self.name}] connection {conn_id} ended: {e!r}", flush=True)
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, target: str,
        path: str, version: str, headers: list[tuple[str, str]], conn: dict,
    ) -> bool:
        h = {k.lower(): v for k, v in headers}
        conn_tokens = {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
        if version == "HTTP/1.1":
            keep = "close" not in conn_tokens
        else:
            keep = "keep-alive" in conn_tokens
        query = parse_qs(urlsplit(target).query)

        # Upgrade: answer 101 and become a raw byte echo.
        if path == "/ws" and "upgrade" in conn_tokens and "upgrade" in h:
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + h["upgrade"].encode()
                + b"\r\nConnection: Upgrade\r\nx-app: " + self.name.encode() + b"\r\n\r\n"
            )
            await writer.drain()
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.write(b"<ws-closed>")
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return False

        sent_100 = False
        if h.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            sent_100 = True
        trailers: list[tuple[str, str]] = []
        body_len, body_sha = await read_body(reader, headers, trailers)

        if path == "/__stats":
            body = json.dumps({"name": self.name, "requests": self.requests, "paths": self.paths,
                               "connections": self.connections}).encode()
            return await self._respond(writer, method, 200, [("content-type", "application/json")], body, keep)

        if path == "/forge-error":
            # What a mesh hop would say it made: an app must not be able to pass for one.
            hdr = ("glassmesh-error", f"{query.get('reason', ['connect_refused'])[0]}; hop=host2/inbound")
            return await self._respond(writer, method, 502, [hdr, ("x-app", self.name)], b"forged\n", keep)

        if path == "/sleep":
            # An answer that takes a while (a slow request in flight when a proxy is told to stop).
            await asyncio.sleep(min(float(query.get("s", ["1"])[0]), 3600.0))
            return await self._respond(writer, method, 200, [("x-app", self.name)], b"slept\n", keep)

        delay = int(query.get("delay_ms", [str(self.delay_ms)])[0])
        if delay > 0 and path != "/__stats":
            await asyncio.sleep(delay / 1000)

        if self.fail_status and path != "/__stats":
            return await self._respond(writer, method, self.fail_status, [("x-app", self.name)],
                                       f"failing with {self.fail_status}\n".encode(), keep)

        if path == "/trailers":
            # A chunked answer that ends with trailers (as gRPC-Web and checksumming servers send):
            # the request's own trailers, then the body's length and digest, and any `t` in the query.
            body = f"{body_len} {body_sha}\n".encode()
            writer.write(f"HTTP/1.1 200 OK\r\nx-app: {self.name}\r\ntransfer-encoding: chunked\r\n"
                         f"trailer: x-body-sha256\r\n\r\n".encode())
            writer.write(b"%x\r\n%s\r\n" % (len(body), body))
            fields = [*trailers, ("x-body-sha256", body_sha), *(tuple(t.split(":", 1)) for t in query.get("t", []))]
            writer.write(b"0\r\n" + "".join(f"{k}: {v.strip()}\r\n" for k, v in fields).encode("latin-1") + b"\r\n")
            return keep

        if path == "/drip":
            gap, n = int(query.get("gap_ms", ["100"])[0]), int(query.get("n", ["5"])[0])
            writer.write(f"HTTP/1.1 200 OK\r\nx-app: {self.name}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
            for _ in range(n):
                await writer.drain()
                await asyncio.sleep(gap / 1000)
                writer.write(b"1\r\nx\r\n")
            writer.write(b"0\r\n\r\n")
            return keep

        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            extra = [("x-app", self.name)]
            if code in (204, 304):
                if code == 304:
                    extra.append(("etag", '"v1"'))
                return await self._respond(writer, method, code, extra, None, keep)
            return await self._respond(writer, method, code, extra, f"status {code}\n".encode(), keep)

        if path == "/endless-header":
            # A response head that never ends: one header value, up to `bytes` long (bounded), no CRLF.
            n = int(query.get("bytes", ["0"])[0])
            writer.write(b"HTTP/1.1 200 OK\r\nx-big: ")
            block = b"a" * 65536
            try:
                while n > 0:
                    writer.write(block[: min(n, len(block))])
                    n -= len(block)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            writer.close()
            return False

        if path == "/download":
            n = int(query.get("bytes", ["0"])[0])
            chunked = query.get("chunked", ["0"])[0] == "1"
            start = (
                f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nx-app: {self.name}\r\n"
            ).encode()
            start += b"transfer-encoding: chunked\r\n" if chunked else f"content-length: {n}\r\n".encode()
            if not keep:
                start += b"connection: close\r\n"
            writer.write(start + b"\r\n")
            if method == "HEAD":
                return keep
            for c in pattern_chunks(n):
                if chunked:
                    writer.write(b"%x\r\n" % len(c))
                    writer.write(c)
                    writer.write(b"\r\n")
                else:
                    writer.write(c)
                await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
            return keep

        info = {
            "app": self.name, "method": method, "target": target, "path": path, "version": version,
            "headers": [[k, v] for k, v in headers], "body_length": body_len, "body_sha256": body_sha,
            "sent_100": sent_100, "trailers": [[k, v] for k, v in trailers], **conn,
        }
        body = json.dumps(info).encode()
        return await self._respond(
            writer, method, 200, [("content-type", "application/json"), ("x-app", self.name)], body, keep
        )

    async def _respond(
        self, writer: asyncio.StreamWriter, method: str, code: int, headers: list[tuple[str, str]],
        body: bytes | None, keep: bool,
    ) -> bool:
        lines = [f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"content-length: {len(body)}")
        if not keep:
            lines.append("connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body is not None and method != "HEAD":
            writer.write(body)
        await writer.drain()
        return keep

    async def _simple(self, writer: asyncio.StreamWriter, code: int, body: bytes, close: bool) -> None:
        await self._respond(writer, "GET", code, [("content-type", "text/plain")], body, not close)


def parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except ValueError:
        raise BadRequest(f"bad request line {lines[0][:100]!r}") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(f"bad version {version!r}")
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise BadRequest("obs-fold")
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:100]!r}")
        headers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
    return method, target, version, headers


async def read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]],
                    trailers: list[tuple[str, str]] | None = None) -> tuple[int, str]:
    """Read the request body (content-length or chunked), hashing it; returns (length, sha256).

    A chunked body's trailer fields go into `trailers` when given."""
    h = hashlib.sha256()
    total = 0
    te = [v.strip().lower() for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v.strip() for k, v in headers if k.lower() == "content-length"]
    if te:
        if te != ["chunked"]:
            raise BadRequest(f"unsupported transfer-encoding {te}")
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    name, sep, value = line[:-2].partition(b":")
                    if not sep or not name or name != name.strip():
                        raise BadRequest(f"bad trailer line {line[:100]!r}")
                    if trailers is not None:
                        trailers.append((name.decode("latin-1"), value.strip(b" \t").decode("latin-1")))
                break
            left = size
            while left:
                data = await reader.read(min(left, 256 * 1024))
                if not data:
                    raise ConnectionError("eof in chunk")
                h.update(data)
                left -= len(data)
            total += size
            if await reader.readexactly(2) != b"\r\n":
                raise BadRequest("bad chunk end")
    elif cl:
        if len(set(cl)) != 1:
            raise BadRequest(f"conflicting content-length {cl}")
        left = int(cl[0])
        while left:
            data = await reader.read(min(left, 256 * 1024))
            if not data:
                raise ConnectionError("eof in body")
            h.update(data)
            left -= len(data)
            total += len(data)
    return total, h.hexdigest()


# --------------------------------------------------------------------------- TCP app


class TcpApp:
    """Echo: every byte is sent back as it arrives; on EOF from the client, a summary line, then close.

    Sink: nothing is sent until EOF; then the summary line. Either way the
    reply after the client's half-close proves half-close crossed the link.
    """

    def __init__(self, mode: str, banner: bytes) -> None:
        self.mode = mode
        self.banner = banner
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cid = self.connections
        print(f"[tcp] connection {cid} from {writer.get_extra_info('peername')}", flush=True)
        h = hashlib.sha256()
        total = 0
        try:
            if self.banner:
                writer.write(self.banner)
                await writer.drain()
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                h.update(data)
                total += len(data)
                if self.mode == "echo":
                    writer.write(data)
                    await writer.drain()
            summary = json.dumps({"bytes": total, "sha256": h.hexdigest(), "connection": cid})
            writer.write(b"EOF " + summary.encode() + b"\n")
            await writer.drain()
            print(f"[tcp] connection {cid} got EOF after {total} bytes", flush=True)
        except ConnectionError as e:
            print(f"[tcp] connection {cid} error {e!r}", flush=True)
        finally:
            writer.close()


# --------------------------------------------------------------------------- main


def _quietly(serve: Any) -> Any:
    """A connection handler that ends quietly when the app stops (3.11 logs a cancelled one as an error)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        except asyncio.CancelledError:
            writer.close()

    return handler


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    if args.kind == "http":
        app = HttpApp(args.name, args.delay_ms, args.fail_status)
        server = await asyncio.start_server(_quietly(app.serve), host, int(port), limit=MAX_HEAD,
                                            reuse_address=True)
    else:
        tcp = TcpApp(args.mode, args.banner.encode())
        server = await asyncio.start_server(_quietly(tcp.serve), host, int(port), reuse_address=True)
    print(f"listening {args.kind} on {args.listen}", flush=True)
    stop = asyncio.Event()  # SIGTERM ends the app with status 0, as a well-behaved service stops
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["http", "tcp"])
    p.add_argument("--listen", required=True)
    p.add_argument("--name", default="app")
    p.add_argument("--mode", choices=["echo", "sink"], default="echo")
    p.add_argument("--banner", default="")
    p.add_argument("--delay-ms", type=int, default=0, help="http: wait this long before each answer")
    p.add_argument("--fail-status", type=int, default=0, help="http: answer every request with this status")
    args = p.parse_args(argv)
    try:
        asyncio.run(_main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
