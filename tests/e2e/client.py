"""The client side of the end-to-end tests: raw HTTP/1.x over a socket, TLS clients, metrics, a recording relay.

Deliberately hand-written so that tests control and see every byte a user's
client would send and receive, independent of the proxy's own parser.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- raw HTTP client


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    body_len: int = 0
    body_sha256: str = ""
    trailers: list[tuple[str, str]] = field(default_factory=list)  # a chunked body's trailer fields

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        body = self.body[:400] + (b"..." if len(self.body) > 400 else b"")
        return f"<Response {self.status} {self.reason} headers={self.headers} body={body!r}>"


class HttpConn:
    """One client connection speaking HTTP/1.x by hand, so tests control every byte."""

    def __init__(self, addr: str | None = None, timeout: float = 15.0, sock: socket.socket | None = None) -> None:
        if sock is None:
            assert addr is not None
            sock = socket.create_connection(split(addr), timeout=timeout)
        sock.settimeout(timeout)
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> HttpConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def send(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.sock.recv(256 * 1024)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def recv_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buf)} of {n} bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_until_eof(self, limit: int = 1 << 30) -> bytes:
        while self._fill():
            if len(self.buf) > limit:
                raise ValueError("too much data")
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > 1 << 20:
                raise ValueError("line too long")
            if not self._fill():
                raise EOFError(f"connection closed mid-line (have {bytes(self.buf[:200])!r})")

    def send_request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]] | dict[str, str] = (),
        body: bytes | None = None, version: str = "HTTP/1.1",
    ) -> None:
        hs = list(headers.items()) if isinstance(headers, dict) else list(headers)
        names = {k.lower() for k, _ in hs}
        if body is not None and "content-length" not in names and "transfer-encoding" not in names:
            hs.append(("Content-Length", str(len(body))))
        head = f"{method} {target} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hs) + "\r\n"
        self.send(head.encode("latin-1") + (body or b""))

    def request(
        self, method: str, target: str, headers: Iterable[tuple[str, str]] | dict[str, str] = (),
        body: bytes | None = None, version: str = "HTTP/1.1",
    ) -> Response:
        self.send_request(method, target, headers, body, version)
        return self.read_final(method)

    def read_head(self) -> Response:
        line = self._line()
        try:
            version, status, *reason = line.decode("latin-1").split(" ", 2)
            code = int(status)
        except ValueError:
            raise ValueError(f"bad status line {line[:200]!r}") from None
        headers = []
        while True:
            h = self._line()
            if not h:
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return Response(version, code, reason[0] if reason else "", headers)

    def read_response(
        self, method: str = "GET", sink: Callable[[bytes], None] | None = None, keep_body: bool = True,
    ) -> Response:
        """Read one response (1xx included). The body is kept, and also passed to `sink` if given."""
        r = self.read_head()
        h = hashlib.sha256()

        def take(data: bytes) -> None:
            h.update(data)
            r.body_len += len(data)
            if sink is not None:
                sink(data)
            if keep_body:
                r.body += data

        no_body = method == "HEAD" or 100 <= r.status < 200 or r.status in (204, 304)
        te = (r.header("transfer-encoding") or "").lower()
        cl = r.header("content-length")
        if no_body:
            pass
        elif "chunked" in te:
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while t := self._line():
                        k, _, v = t.decode("latin-1").partition(":")
                        r.trailers.append((k.strip(), v.strip()))
                    break
                self._read_n(size, take)
                if self.recv_exact(2) != b"\r\n":
                    raise ValueError("bad chunk terminator")
        elif cl is not None:
            self._read_n(int(cl), take)
        else:
            while True:
                if self.buf:
                    take(bytes(self.buf))
                    self.buf.clear()
                if not self._fill():
                    break
        r.body_sha256 = h.hexdigest()
        return r

    def _read_n(self, n: int, take: Callable[[bytes], None]) -> None:
        while n:
            if not self.buf and not self._fill():
                raise EOFError(f"connection closed with {n} body bytes missing")
            part = bytes(self.buf[:n])
            del self.buf[: len(part)]
            n -= len(part)
            take(part)

    def read_final(self, method: str = "GET", **kw: Any) -> Response:
        """Read responses, skipping interim 1xx ones (but not 101), and return the final one."""
        while True:
            r = self.read_response(method, **kw)
            if r.status >= 200 or r.status == 101:
                return r

    def closed_by_peer(self, wait: float = 2.0) -> bool:
        """True when the peer closes (or resets) the connection within `wait` seconds with nothing unread."""
        if self.buf:
            return False
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            return True
        finally:
            self.sock.settimeout(old)
        if data:
            self.buf += data
            return False
        self.eof = True
        return True


def get(addr: str, path: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> Response:
    host = split(addr)[0]
    with HttpConn(addr, timeout=timeout) as c:
        return c.request("GET", path, {"Host": host, "Connection": "close", **(headers or {})})


# --------------------------------------------------------------------------- TLS clients


def client_context(
    ca_pem: Path | None = None, cert: Path | None = None, key: Path | None = None,
    alpn: Iterable[str] = ("http/1.1",),
) -> ssl.SSLContext:
    """A TLS client context that trusts `ca_pem` (or nothing, verifying nothing) and presents `cert`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is not None:
        ctx.load_verify_locations(str(ca_pem))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(list(alpn))
    return ctx


# --------------------------------------------------------------------------- metrics


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append(Sample(s.name, dict(s.labels), s.value))
    return out


def metric(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def has_series(samples: list[Sample], name: str, **labels: str) -> bool:
    return any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples)


# --------------------------------------------------------------------------- relay


class Relay:
    """A plain TCP forwarder that records every byte it carries, in both directions."""

    def __init__(self, listen: str, target: str, record_limit: int = 64 << 20) -> None:
        self.listen = listen
        self.target = target
        self.up = bytearray()  # client -> target
        self.down = bytearray()  # target -> client
        self.connections = 0
        self.limit = record_limit
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(split(listen))
        self._srv.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            try:
                t = socket.create_connection(split(self.target), timeout=5)
            except OSError:
                c.close()
                continue
            t.settimeout(None)
            with self._lock:
                self.connections += 1
                self._socks += [c, t]
            threading.Thread(target=self._pump, args=(c, t, self.up), daemon=True).start()
            threading.Thread(target=self._pump, args=(t, c, self.down), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rec: bytearray) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if len(rec) < self.limit:
                        rec += data
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def recorded(self) -> bytes:
        with self._lock:
            return bytes(self.up) + b"\n--down--\n" + bytes(self.down)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._srv.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()


def mesh_error(r: Response) -> tuple[str, str]:
    """('no_endpoints', 'host1/outbound') from `glassmesh-error: no_endpoints; hop=host1/outbound`."""
    v = r.header("glassmesh-error")
    assert v is not None, f"no glassmesh-error header in {r!r}"
    reason, _, rest = v.partition(";")
    params = dict(p.strip().partition("=")[::2] for p in rest.split(";") if p.strip())
    return reason.strip(), params.get("hop", "")


def trail(r: Response) -> list[tuple[str, float]]:
    """[('host1/outbound', 1.2), ('host2/inbound', 0.4)] from the glassmesh-trail header(s)."""
    out = []
    for v in r.all("glassmesh-trail"):
        for hop in v.split(","):
            name, _, params = hop.strip().partition(";")
            kv = dict(p.strip().partition("=")[::2] for p in params.split(";") if p.strip())
            out.append((name.strip(), float(kv["dur"])))
    return out


def app_headers(info: dict[str, Any], name: str) -> list[str]:
    """Values of header `name` (any case) as the echo app received them."""
    return [v for k, v in info["headers"] if k.lower() == name.lower()]


def eventually(check: Callable[[], None], timeout: float = 3.0) -> None:
    """Run `check` until it stops raising AssertionError (metrics are recorded just after a response)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
