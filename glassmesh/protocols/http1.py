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
from http import HTTPStatus
from typing import Final

from glassmesh.protocols.message import CONNECTION_FIELDS

# Headers that never cross a proxy: the connection's own (message.py) and Content-Length,
# re-derived for the next hop. Trailer (the names a trailer section will hold) crosses: the
# trailers themselves do.
HOP_BY_HOP = CONNECTION_FIELDS | {b"content-length"}

# Headers only the mesh may set; a client-sent copy is dropped before forwarding.
SOURCE_HEADER = b"glassmesh-source"
TRAIL_HEADER = b"glassmesh-trail"
ERROR_HEADER = b"glassmesh-error"
REQUEST_ID = b"x-request-id"
TRACEPARENT = b"traceparent"

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")  # the rule, for reading
_LOWER_HEX: Final = bytes(1 if chr(i) in "0123456789abcdef" else 0 for i in range(256))


def _length(v: bytes) -> int:
    """A Content-Length value: 1 to 18 ASCII digits, or -1. A loop: compiled, each byte
    is a compare and a multiply, where a regex match cost about 1,000 instructions,
    v.isdigit() a method lookup by name and int(v) a parse of its own."""
    n = len(v)
    if n == 0 or n > 18:
        return -1
    total = 0
    for i in range(n):
        c = v[i]
        if c < 48 or c > 57:
            return -1
        total = total * 10 + (c - 48)
    return total


def _stripped(v: bytes) -> bytes:
    """v without surrounding spaces and tabs; v itself (no call) when it has none, as nearly always."""
    n = len(v)
    if n and (v[0] == 32 or v[0] == 9 or v[n - 1] == 32 or v[n - 1] == 9):
        return v.strip(b" \t")
    return v

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
    505: b"HTTP Version Not Supported",
}


class BadMessage(Exception):
    """A message the proxy refuses; `reason` is the machine code, str() the sentence."""

    def __init__(self, message: str, reason: str = "bad_request", status: int = 400) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status


_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close", b"upgrade"))
# The spellings seen nearly always, checked before lowercasing.
_PLAIN_CONNECTION_EXACT: Final = frozenset((b"keep-alive", b"Keep-Alive", b"close", b"Close", b"upgrade", b"Upgrade"))


def _without_listed(conn: bytes | None, headers: list[bytes]) -> list[bytes]:
    """headers (flat: name, value, name, value, ...) less those the Connection header names."""
    if conn is None or conn in _PLAIN_CONNECTION_EXACT or conn.lower() in _PLAIN_CONNECTION:
        return headers
    names = connection_tokens(conn) - _PLAIN_CONNECTION
    if not names:
        return headers
    return _without(headers, names)


_ERROR_ONLY: Final = frozenset((ERROR_HEADER,))


def _without(headers: list[bytes], names: set[bytes] | frozenset[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(headers) - 1, 2):
        n = headers[i]
        if n.lower() not in names:
            out.append(n)
            out.append(headers[i + 1])
    return out


def header_pairs(headers: list[bytes]) -> list[tuple[bytes, bytes]]:
    """A flat header list as (name, value) pairs, off the request path (tests, the retry check)."""
    return [(headers[i], headers[i + 1]) for i in range(0, len(headers) - 1, 2)]


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
_H_DROP: Final = 0
_H_CL: Final = 1
_H_TE: Final = 2
_H_HOST: Final = 3
_H_CONN: Final = 4
_H_RID: Final = 5
_H_TP: Final = 6
_H_UPGRADE: Final = 7
_H_TRAIL: Final = 8
_H_PCONN: Final = 9  # Proxy-Connection: dropped, but llhttp reads it as Connection (see says_connection)
_H_ERR: Final = 10  # glassmesh-error in a response: forwarded, and kept apart (a peer's reason, or an app's forgery)
_REQUEST_KIND: Final = {n: _H_DROP for n in HOP_BY_HOP | {SOURCE_HEADER, TRAIL_HEADER}}
_REQUEST_KIND.update({
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"host": _H_HOST,
    b"connection": _H_CONN,
    REQUEST_ID: _H_RID,
    TRACEPARENT: _H_TP,
    b"upgrade": _H_UPGRADE,
    b"proxy-connection": _H_PCONN,
})
_RESPONSE_KIND: Final = {n: _H_DROP for n in HOP_BY_HOP}
_RESPONSE_KIND.update({
    b"content-length": _H_CL,
    b"transfer-encoding": _H_TE,
    b"connection": _H_CONN,
    REQUEST_ID: _H_RID,
    b"upgrade": _H_UPGRADE,
    TRAIL_HEADER: _H_TRAIL,
    ERROR_HEADER: _H_ERR,
})


_FORWARD: Final = -1
# Spellings kept per name shape: a peer sending random names of a special shape can make
# this many stick, then its odd spellings are lowercased each time (its own requests' cost).
_SPELLINGS_MAX: Final = 8


class _Spellings:
    """A kinds table's header names by shape (first letter and length), each in the spellings seen.

    Most names arrive in a handful of spellings: one shape holds the canonical lowercase
    name first, then each spelling met (bounded), beside its kind. A name of no special
    shape (Content-Type, Date, Server, ...) is forwarded without a look; one of a special
    shape is compared with the few spellings of that shape (a length check and a memcmp).
    A dict keyed by the name hashed every name anew (each arrives as a new object): about
    150 instructions per special header more (callgrind).

    The shape is the first byte's low five bits (a letter's, whatever its case) and the
    length: 1,024 slots per list. A name starting with some other byte may share a letter's
    slot; it is compared like any other, so sharing costs time, never a wrong kind.
    """

    def __init__(self, table: dict[bytes, int]) -> None:
        self.table = table
        self.slots: list[_Shape | None] = [None] * (32 * 32)
        for name, kind in table.items():
            if 0 < len(name) < 32:
                at = (name[0] & 31) * 32 + len(name)
                slot = self.slots[at]
                if slot is None:
                    slot = self.slots[at] = _Shape()
                slot.add(name, kind)

    def spellings(self) -> int:
        """How many spellings are kept, canonical names included (for tests)."""
        return sum(len(s.names) for s in self.slots if s is not None)


class _Shape:
    """The spellings of one shape's names, each beside its kind."""

    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.kinds: list[int] = []

    def add(self, name: bytes, kind: int) -> None:
        self.names.append(name)
        self.kinds.append(kind)


_request_kind_cache: Final = _Spellings(_REQUEST_KIND)
_response_kind_cache: Final = _Spellings(_RESPONSE_KIND)


def _kind(name: bytes, cache: _Spellings) -> int:
    n = len(name)
    if n == 0 or n >= 32:
        return _FORWARD
    slot = cache.slots[(name[0] & 31) * 32 + n]
    if slot is None:
        return _FORWARD
    names = slot.names
    for i in range(len(names)):
        if names[i] == name:
            return slot.kinds[i]
    k = cache.table.get(name.lower(), _FORWARD)
    if len(names) < _SPELLINGS_MAX:
        slot.add(name, k)
    return k


class RequestHead:
    """A request's headers, sorted in one pass once the head is complete.

    Header lists are flat (name, value, name, value, ...): a tuple per header,
    made and freed, cost about 200 instructions each.

    `forward` keeps the end-to-end headers in order (Host, x-request-id and a
    valid traceparent among them); hop-by-hop and mesh-only headers are held
    apart; the ambiguous shapes are refused. One loop in one call: a method
    call per header cost more than the sorting itself.
    """

    __slots__ = ("forward", "cl", "te", "host", "conn", "rid", "tp", "upgrade", "says_connection",
                 "method", "target", "keep_alive", "wants_upgrade", "body_framing", "http10")

    def __init__(self, headers: list[bytes]) -> None:
        forward: list[bytes] = []
        cl = te = host = conn = rid = tp = upgrade = None
        # Whether a Connection or Proxy-Connection header was sent (llhttp reads both for keep-alive).
        says_connection = False
        cache = _request_kind_cache
        for i in range(0, len(headers) - 1, 2):
            name = headers[i]
            value = headers[i + 1]
            kind = _kind(name, cache)
            if kind == _FORWARD:
                if 95 in name:  # b"_": an int is found by memchr, a bytes needle costs a buffer per name
                    # CGI, WSGI and many frameworks read `Transfer_Encoding` or `glassmesh_source` as
                    # their dashed twins: dropped, as nginx does by default (underscores_in_headers).
                    continue
                forward.append(name)
                forward.append(value)
            elif kind == _H_DROP:
                pass
            elif kind == _H_HOST:
                if host is not None:
                    raise BadMessage("more than one Host header")
                host = value
                forward.append(name)
                forward.append(value)
            elif kind == _H_RID:
                if rid is None:
                    rid = value
                    forward.append(name)
                    forward.append(value)
            elif kind == _H_TP:
                if tp is None and valid_traceparent(value):
                    tp = value
                    forward.append(name)
                    forward.append(value)
            elif kind == _H_CL:
                if cl is not None:
                    raise BadMessage("more than one Content-Length header")
                cl = _stripped(value)
            elif kind == _H_TE:
                if te is not None:
                    raise BadMessage("more than one Transfer-Encoding header")
                te = value.strip().lower()
            elif kind == _H_CONN:
                conn = value if conn is None else conn + b", " + value
                says_connection = True
            elif kind == _H_PCONN:
                says_connection = True
            elif kind == _H_UPGRADE:
                upgrade = value
        self.says_connection = says_connection
        self.forward = forward
        self.cl = cl
        self.te = te
        self.host = host
        self.conn = conn
        self.rid = rid
        self.tp = tp
        self.upgrade = upgrade
        # What the codec (http1_codec.py) read of the request line and its connection, set there.
        self.method = b""
        self.target = b""
        self.keep_alive = True
        self.wants_upgrade = False
        self.body_framing = Framing.NONE
        self.http10 = False

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
            n = _length(cl)
            if n < 0:
                raise BadMessage(f"invalid Content-Length {cl[:20]!r}")
            return (Framing.LENGTH, n) if n else (Framing.NONE, 0)
        return Framing.NONE, 0

    def drop_connection_listed(self) -> None:
        """Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)."""
        self.forward = _without_listed(self.conn, self.forward)

    def set_host(self, authority: bytes) -> None:
        fwd = _without(self.forward, _HOST_ONLY)
        fwd.append(b"host")
        fwd.append(authority)
        self.forward = fwd
        self.host = authority


_HOST_ONLY: Final = frozenset((b"host",))


class ResponseHead:
    """A response's headers, sorted in one pass; see RequestHead.

    An upstream connection keeps one and parse()s each response into it: a new
    object per response, and freeing it, cost about 1,500 instructions.
    """

    __slots__ = ("forward", "cl", "te", "conn", "has_rid", "upgrade", "trail", "error")

    def __init__(self, headers: list[bytes]) -> None:
        self.parse(headers)

    def parse(self, headers: list[bytes]) -> None:
        forward: list[bytes] = []
        cl = te = conn = upgrade = trail = error = None
        has_rid = False
        cache = _response_kind_cache
        for i in range(0, len(headers) - 1, 2):
            name = headers[i]
            value = headers[i + 1]
            kind = _kind(name, cache)
            if kind == _FORWARD:
                forward.append(name)
                forward.append(value)
            elif kind == _H_DROP:
                pass
            elif kind == _H_CL:
                v = _stripped(value)
                if cl is not None and cl != v:
                    raise BadMessage("response has conflicting Content-Length headers",
                                     "upstream_protocol_error", 502)
                cl = v
            elif kind == _H_TE:
                te = value.strip().lower()
            elif kind == _H_RID:
                has_rid = True
                forward.append(name)
                forward.append(value)
            elif kind == _H_CONN:
                conn = value if conn is None else conn + b", " + value
            elif kind == _H_UPGRADE:
                upgrade = value
            elif kind == _H_TRAIL:
                trail = value
            elif kind == _H_ERR:
                error = value
                forward.append(name)
                forward.append(value)
        self.error = error
        self.forward = forward
        self.cl = cl
        self.te = te
        self.conn = conn
        self.has_rid = has_rid
        self.upgrade = upgrade
        self.trail = trail

    def framing(self, status: int, request_method: bytes) -> tuple[int, int]:
        """(framing, content_length) of the response as received from the next hop."""
        if request_method == b"HEAD" or status < 200 or status in (204, 304):
            return Framing.NONE, 0
        if self.te is not None:
            return (Framing.CHUNKED, 0) if self.te.endswith(b"chunked") else (Framing.CLOSE, 0)
        cl = self.cl
        if cl is not None:
            n = _length(cl)
            if n < 0:
                raise BadMessage("response has an invalid Content-Length", "upstream_protocol_error", 502)
            return (Framing.LENGTH, n) if n else (Framing.NONE, 0)
        return Framing.CLOSE, 0

    def drop_error(self) -> None:
        """An app's own glassmesh-error header: never passed on as if a mesh hop had made it."""
        self.forward = _without(self.forward, _ERROR_ONLY)
        self.error = None

    def drop_connection_listed(self) -> None:
        self.forward = _without_listed(self.conn, self.forward)


def split_target(method: bytes, target: bytes, host: bytes | None) -> tuple[bytes, bytes]:
    """(authority, origin-form path) of a request sent to the outbound proxy.

    Accepts proxy form (`http://b/x`) and origin form with a Host header.
    """
    if target[:1] == b"/":  # origin form first: nearly every request, and one comparison
        if not host:
            raise BadMessage("request has no Host header and no absolute target")
        return host, target
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


# Request and trace ids need to be unique, not secret. Each id is random
# per-process parts plus a 32-bit counter written in hex from a table: a PRNG
# draw per id cost about 5,000 instructions per request (callgrind), os.urandom
# a system call, and %-formatting the counter 3,000. When the counter wraps,
# the random parts are drawn again, so ids do not repeat within a process.
# reseed() gives each forked worker its own parts.
#
# The first 8 hex digits of the prefix are the host's tag (api/trace.py host_tag, set with
# set_origin once the proxy knows its host): an id minted by a proxy says which host minted
# it, so `glassmesh trace ID` asks that host first instead of every host of the mesh.
_HEX2: Final = [b"%02x" % i for i in range(256)]
_rand = random.Random(os.urandom(16))


class _Ids:
    """The per-process random parts and the counter (a native object: module globals are dict lookups)."""

    def __init__(self) -> None:
        self.count = 0
        self.origin = b""  # 8 hex digits naming the host (set_origin), or empty: all random
        self.prefix = b""  # 16 hex digits: request ids and the first half of trace ids
        self.trace_head = b""  # "00-", the prefix and 8 more random hex digits
        self.span_head = b""  # "-" and 8 random hex digits, never all zero: the first half of span ids
        self.draw()

    def draw(self) -> None:
        o = self.origin
        self.prefix = o + b"%08x" % _rand.getrandbits(32) if o else b"%016x" % _rand.getrandbits(64)
        self.trace_head = b"00-" + self.prefix + b"%08x" % _rand.getrandbits(32)
        self.span_head = b"-%08x" % (_rand.getrandbits(32) | 1)
        self.count = 0

    def next_hex(self) -> bytes:
        """The next counter value as 8 hex digits."""
        n = self.count + 1
        if n > 0xFFFFFFFF:
            self.draw()
            n = 1
        self.count = n
        h = _HEX2
        return h[n >> 24] + h[(n >> 16) & 255] + h[(n >> 8) & 255] + h[n & 255]


_ids: Final = _Ids()


def new_request_id() -> bytes:
    """24 hex digits: the process prefix and the counter."""
    ids = _ids
    c = ids.next_hex()  # first: it may draw a new prefix
    return ids.prefix + c


def new_traceparent() -> bytes:
    """A W3C traceparent with a fresh trace id and a span id that is never zero."""
    ids = _ids
    return _traceparent(ids, ids.next_hex())


def _traceparent(ids: _Ids, c: bytes) -> bytes:
    return b"".join((ids.trace_head, c, ids.span_head, c, b"-01"))


def new_request_id_and_traceparent() -> tuple[bytes, bytes]:
    """Both ids of a request that came with neither, from one step of the counter.

    Unique as each alone is (the trace id holds the request id's prefix and counter, plus
    random digits); one counter step and one join instead of two and four concatenations
    save about 600 instructions on such a request (callgrind).
    """
    ids = _ids
    c = ids.next_hex()  # first: it may draw a new prefix
    return ids.prefix + c, _traceparent(ids, c)


def new_span_id() -> bytes:
    """16 hex digits, never all zero: the span a proxy makes for its hop (spans on)."""
    ids = _ids
    c = ids.next_hex()
    return ids.span_head[1:] + c


def set_origin(tag: bytes) -> None:
    """Begin every id this process mints from now on with tag (8 hex digits: the host's)."""
    _ids.origin = tag
    _ids.draw()


def set_counter(n: int) -> None:
    """Jump the id counter (tests use it to cross the wrap)."""
    _ids.count = n


def reseed() -> None:
    """Call in a forked worker so that workers do not repeat each other's ids."""
    _rand.seed(os.urandom(16))
    _ids.draw()


# Lowercase hex digits to b"0", the dash to itself, any other byte to b"x": a traceparent's
# shape after one translate is exactly _TP_SHAPE when, and only when, the traceparent is valid.
_TP_TABLE: Final = bytes(48 if _LOWER_HEX[i] else 45 if i == 45 else 120 for i in range(256))
_TP_SHAPE: Final = b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-00"


def valid_traceparent(value: bytes) -> bool:
    """55 bytes: lowercase hex, with dashes at 2, 35 and 52 (_TRACEPARENT's shape).

    One translate (a C loop) and one comparison: a regex match cost about 1,500
    instructions, a byte-by-byte loop 1,360 (callgrind, compiled), this about 450.
    """
    return len(value) == 55 and value.translate(_TP_TABLE) == _TP_SHAPE


# Every status line a proxy can forward (100-599), made once: a dict lookup in a
# module global, or formatting, per response cost more than a list index.
# Every registered status gets its phrase (an app's 201 reads "201 Created" through the mesh, not
# "201 Unknown"): RFC 9110's names above, then the stdlib's table; an unregistered one gets an
# empty phrase, which RFC 9112 allows (clients never act on the phrase).
_PHRASES: Final = {int(st): st.phrase.encode() for st in HTTPStatus} | REASONS
_STATUS_LINES: Final = [b"HTTP/1.1 %d %s" % (i, _PHRASES.get(i, b"")) for i in range(600)]


def status_line(status: int) -> bytes:
    if 100 <= status < 600:
        return _STATUS_LINES[status]
    return b"HTTP/1.1 %d %s" % (status, _PHRASES.get(status, b""))


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def last_chunk(trailers: list[bytes] | None) -> bytes:
    """The end of a chunked body, with its trailer section (flat fields, already filtered) when it has one."""
    if not trailers:
        return LAST_CHUNK
    return b"".join(_lines(b"0", trailers)) + b"\r\n"


def _lines(first: bytes, fields: list[bytes]) -> list[bytes]:
    lines = [first + b"\r\n"]
    for i in range(0, len(fields) - 1, 2):
        lines.append(fields[i] + b": " + fields[i + 1] + b"\r\n")
    return lines
