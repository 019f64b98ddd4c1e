"""HTTP/1.1 message rules the proxy applies, with no I/O.

httptools (llhttp) does the byte-level parsing; this module holds what a
proxy must decide on top of it: which headers are hop-by-hop, which
requests are ambiguous enough to refuse (the smuggling shapes), how a
message is framed on the next hop, and how heads are written back out.
"""

from __future__ import annotations

import os
import random
import re
from typing import Final

# Headers that describe one connection and never cross a proxy (RFC 9110 7.6.1),
# plus proxy-only ones. Content-Length is re-derived for the next hop.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    )
)

# Headers only the mesh may set; a client-sent copy is dropped before forwarding.
SOURCE_HEADER = b"glassmesh-source"
TRAIL_HEADER = b"glassmesh-trail"
ERROR_HEADER = b"glassmesh-error"
REQUEST_ID = b"x-request-id"
TRACEPARENT = b"traceparent"

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_DIGITS = re.compile(rb"^[0-9]{1,18}$")

REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    204: b"No Content",
    304: b"Not Modified",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


class BadMessage(Exception):
    """A message the proxy refuses; `reason` is the machine code, str() the sentence."""

    def __init__(self, message: str, reason: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close", b"upgrade"))


def _without_listed(conn: bytes | None, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """headers less those the Connection header names."""
    if conn is None or conn.lower() in _PLAIN_CONNECTION:
        return headers
    names = connection_tokens(conn) - _PLAIN_CONNECTION
    if not names:
        return headers
    return [(n, v) for n, v in headers if n.lower() not in names]


def connection_tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


class Framing:
    """How a body is delimited on the wire."""

    NONE: Final = 0  # no body
    LENGTH: Final = 1  # Content-Length
    CHUNKED: Final = 2  # Transfer-Encoding: chunked
    CLOSE: Final = 3  # response read until the connection closes


# How a request header is treated, looked up once per header by its lowercase name.
# Anything absent is an end-to-end header forwarded as is.
_H_DROP, _H_CL, _H_TE, _H_HOST, _H_CONN, _H_RID, _H_TP, _H_UPGRADE, _H_TRAIL = range(9)
_REQUEST_KIND = {n: _H_DROP for n in HOP_BY_HOP | {SOURCE_HEADER, TRAIL_HEADER}}
_REQUEST_KIND.update({
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"host": _H_HOST,
    b"connection": _H_CONN,
    REQUEST_ID: _H_RID,
    TRACEPARENT: _H_TP,
    b"upgrade": _H_UPGRADE,
})
_RESPONSE_KIND = {n: _H_DROP for n in HOP_BY_HOP}
_RESPONSE_KIND.update({
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONN,
    REQUEST_ID: _H_RID,
    b"upgrade": _H_UPGRADE,
    TRAIL_HEADER: _H_TRAIL,
})


class RequestHead:
    """A request's headers, sorted in one pass once the head is complete.

    `forward` keeps the end-to-end headers in order (Host, x-request-id and a
    valid traceparent among them); hop-by-hop and mesh-only headers are held
    apart; the ambiguous shapes are refused. One loop in one call: a method
    call per header cost more than the sorting itself.
    """

    __slots__ = ("forward", "cl", "te", "host", "conn", "rid", "tp", "upgrade")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        forward: list[tuple[bytes, bytes]] = []
        cl = te = host = conn = rid = tp = upgrade = None
        kinds = _REQUEST_KIND
        for name, value in headers:
            kind = kinds.get(name.lower())
            if kind is None:
                forward.append((name, value))
            elif kind == _H_DROP:
                pass
            elif kind == _H_HOST:
                if host is not None:
                    raise BadMessage("more than one Host header")
                host = value
                forward.append((name, value))
            elif kind == _H_RID:
                if rid is None:
                    rid = value
                    forward.append((name, value))
            elif kind == _H_TP:
                if tp is None and _TRACEPARENT.match(value):
                    tp = value
                    forward.append((name, value))
            elif kind == _H_CL:
                if cl is not None:
                    raise BadMessage("more than one Content-Length header")
                cl = value.strip()
            elif kind == _H_TE:
                if te is not None:
                    raise BadMessage("more than one Transfer-Encoding header")
                te = value.strip().lower()
            elif kind == _H_CONN:
                conn = value if conn is None else conn + b", " + value
            elif kind == _H_UPGRADE:
                upgrade = value
        self.forward = forward
        self.cl, self.te, self.host, self.conn, self.rid, self.tp, self.upgrade = cl, te, host, conn, rid, tp, upgrade

    def framing(self) -> tuple[int, int]:
        """(framing, content_length); refuses framing two parsers could read two ways."""
        te, cl = self.te, self.cl
        if te is not None:
            if cl is not None:
                raise BadMessage("both Content-Length and Transfer-Encoding: ambiguous framing")
            if te != b"chunked":
                raise BadMessage(f"unsupported Transfer-Encoding {te.decode('latin-1')!r}", "not_implemented", 501)
            return Framing.CHUNKED, 0
        if cl is not None:
            if not _DIGITS.match(cl):
                raise BadMessage(f"invalid Content-Length {cl[:20]!r}")
            n = int(cl)
            return (Framing.LENGTH, n) if n else (Framing.NONE, 0)
        return Framing.NONE, 0

    def drop_connection_listed(self) -> None:
        """Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
        self.forward = _without_listed(self.conn, self.forward)

    def set_host(self, authority: bytes) -> None:
        self.forward = [(n, v) for n, v in self.forward if n.lower() != b"host"]
        self.forward.append((b"host", authority))
        self.host = authority


class ResponseHead:
    """A response's headers, sorted in one pass; see RequestHead."""

    __slots__ = ("forward", "cl", "te", "conn", "has_rid", "upgrade", "trail")

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        forward: list[tuple[bytes, bytes]] = []
        cl = te = conn = upgrade = trail = None
        has_rid = False
        kinds = _RESPONSE_KIND
        for name, value in headers:
            kind = kinds.get(name.lower())
            if kind is None:
                forward.append((name, value))
            elif kind == _H_DROP:
                pass
            elif kind == _H_CL:
                v = value.strip()
                if cl is not None and cl != v:
                    raise BadMessage("response has conflicting Content-Length headers",
                                     "upstream_protocol_error", 502)
                cl = v
            elif kind == _H_TE:
                te = value.strip().lower()
            elif kind == _H_RID:
                has_rid = True
                forward.append((name, value))
            elif kind == _H_CONN:
                conn = value if conn is None else conn + b", " + value
            elif kind == _H_UPGRADE:
                upgrade = value
            elif kind == _H_TRAIL:
                trail = value
        self.forward = forward
        self.cl, self.te, self.conn, self.has_rid, self.upgrade, self.trail = cl, te, conn, has_rid, upgrade, trail

    def framing(self, status: int, request_method: bytes) -> tuple[int, int]:
        """(framing, content_length) of the response as received from the next hop."""
        if request_method == b"HEAD" or status < 200 or status in (204, 304):
            return Framing.NONE, 0
        if self.te is not None:
            return (Framing.CHUNKED, 0) if self.te.endswith(b"chunked") else (Framing.CLOSE, 0)
        cl = self.cl
        if cl is not None:
            if not _DIGITS.match(cl):
                raise BadMessage("response has an invalid Content-Length", "upstream_protocol_error", 502)
            n = int(cl)
            return (Framing.LENGTH, n) if n else (Framing.NONE, 0)
        return Framing.CLOSE, 0

    def drop_connection_listed(self) -> None:
        self.forward = _without_listed(self.conn, self.forward)


def split_target(method: bytes, target: bytes, host: bytes | None) -> tuple[bytes, bytes]:
    """(authority, origin-form path) of a request sent to the outbound proxy.

    Accepts proxy form (`http://b/x`) and origin form with a Host header.
    """
    if target.startswith((b"http://", b"HTTP://")):
        rest = target[7:]
        slash = rest.find(b"/")
        q = rest.find(b"?")
        cut = min(i for i in (slash, q, len(rest)) if i >= 0)
        authority, path = rest[:cut], rest[cut:]
        if not path.startswith(b"/"):
            path = b"/" + path
        if b"@" in authority:
            raise BadMessage("userinfo in the request target is not allowed")
        return authority, path
    if target.startswith(b"/"):
        if not host:
            raise BadMessage("request has no Host header and no absolute target")
        return host, target
    if method == b"OPTIONS" and target == b"*":
        if not host:
            raise BadMessage("request has no Host header")
        return host, target
    if method == b"CONNECT":
        raise BadMessage("CONNECT is not supported; use a tcp link", "bad_request", 405)
    raise BadMessage(f"unsupported request target {target[:60]!r}")


def service_of(authority: bytes) -> str:
    """The service name an authority names: `b`, `b:80`, `b.mesh` all name `b`... only `b` and `b:port`."""
    host = authority.rsplit(b":", 1)[0] if authority.count(b":") == 1 else authority
    return host.lower().decode("ascii", "replace")


# Request and trace ids need to be unique, not secret: a random per-process
# prefix and a counter cost one formatting call per id, where a PRNG draw per
# id cost about 5,000 instructions per request (callgrind) and os.urandom a
# system call. reseed() gives each forked worker its own prefix.
_rand = random.Random(os.urandom(16))
_prefix = b"%016x" % _rand.getrandbits(64)
_span_salt = _rand.getrandbits(64) | 1
_count = _rand.getrandbits(32)


def new_request_id() -> bytes:
    """24 hex digits: the process prefix and a 32-bit counter."""
    global _count
    _count += 1
    return b"%s%08x" % (_prefix, _count & 0xFFFFFFFF)


def new_traceparent() -> bytes:
    """A W3C traceparent with a fresh trace id (prefix + counter) and a span id that is never zero."""
    global _count
    _count += 1
    n = _count & 0xFFFFFFFFFFFFFFFF
    return b"00-%s%016x-%016x-01" % (_prefix, n, (n ^ _span_salt) or 1)


def reseed() -> None:
    """Call in a forked worker so that workers do not repeat each other's ids."""
    global _prefix, _span_salt, _count
    _rand.seed(os.urandom(16))
    _prefix = b"%016x" % _rand.getrandbits(64)
    _span_salt = _rand.getrandbits(64) | 1
    _count = _rand.getrandbits(32)


def valid_traceparent(value: bytes) -> bool:
    return bool(_TRACEPARENT.match(value))


def head_bytes(first_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [first_line, b"\r\n"]
    for n, v in headers:
        parts += (n, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_STATUS_LINES: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Unknown"))
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
