"""The recent requests of one proxy process, always kept, for `glassmesh trace` (compiled with the hot path).

An observer of every finished exchange (Runtime.observers). It must cost next
to nothing, since it is always on, and what it cost was memory, not
instructions: a record that held on to the bytes its exchange made (request
id, traceparents, method, path) kept a few small objects alive for 3,072
requests, so each request freed cold objects of one long gone and mixed
lifetimes in the allocator's pools (instructions +1.5%, CPU time about +8%).
So a ring is made of slots, each made the first time the ring reaches it and
filled in place from then on: numbers, references to what lives on anyway
(the side's names, the service, the endpoint's pool key), and the exchange's
bytes copied into the slot's own buffer by one struct.pack_into. Nothing is
made or freed per request, nothing of the exchange outlives it, and the
garbage collector never sees a new object. A slot becomes a record with
bytes (Rec) only when asked: `find`, and the span exporter when OTLP export
is on. Failures (a 5xx, a mesh error) go to a ring of their own, so that a
burst of successes does not push out the error an operator came to look at.

Bounded: RECENT + FAILED slots of about 700 bytes each (MAX_ID bytes of
request id, two traceparents of 55, MAX_METHOD of method, MAX_PATH of path):
2 MiB at most, whatever clients send. Times are the monotonic clock the
request path reads; they become wall-clock times when asked (`row`).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from glassmesh.proxy.http import Exchange

RECENT: Final = 2048  # records of requests that did not fail
FAILED: Final = 1024  # records of failed requests (5xx, mesh errors): kept longest
MAX_PATH: Final = 256
MAX_ID: Final = 128
MAX_METHOD: Final = 32  # a longer method (none is) is kept by reference instead
TP: Final = 55  # a traceparent's length: the parser takes no other (http1.valid_traceparent)
# A slot's buffer: request id, incoming traceparent, outgoing one, method, path; `s` pads with zeros.
_LAYOUT: Final = struct.Struct(f"{MAX_ID}s{TP}s{TP}s{MAX_METHOD}s{MAX_PATH}s")
_TP_IN: Final = MAX_ID
_TP_OUT: Final = MAX_ID + TP
_METHOD: Final = MAX_ID + 2 * TP
_PATH: Final = MAX_ID + 2 * TP + MAX_METHOD


class Rec:
    """One finished exchange as the proxy saw it, with bytes of its own: what `find` and the span exporter hand out."""

    def __init__(self) -> None:
        self.rid: bytes | None = None
        self.tp_in: bytes | None = None
        self.tp_out: bytes | None = None
        self.span: bytes | None = None
        self.tracestate: bytes | None = None
        self.side: str = ""
        self.source: str = ""
        self.destination: str | None = None
        self.method: bytes = b""
        self.path: bytes = b""
        self.status: int = 0
        self.reason: str = ""
        self.t0: float = 0.0
        self.sent: float = 0.0
        self.head: float = 0.0
        self.end: float = 0.0
        self.attempts: int = 0
        self.key: Any = None  # the endpoint's routing.PoolKey (an immutable tuple), or None
        self.tried: tuple[tuple[str, int], ...] | None = None  # endpoints of earlier tries (None: one try)
        self.message: str = ""
        self.peer_error: bytes | None = None


class Slot:
    """A place in a ring, filled in place by every exchange that lands there (see the module's docstring)."""

    def __init__(self) -> None:
        self.buf = bytearray(_LAYOUT.size)
        self.rid_n = -1  # bytes of request id in buf (-1: none)
        self.tp_in = False  # whether buf holds an incoming traceparent
        self.tp_out = False
        self.method_n = 0
        self.method: bytes | None = None  # a method longer than MAX_METHOD, by reference (never seen)
        self.path_n = 0
        # Rare or opt-in, so kept by reference: a span of its own (OTLP export on), an error's text.
        self.span: bytes | None = None
        self.tracestate: bytes | None = None
        self.message = ""
        self.peer_error: bytes | None = None
        self.tried: tuple[tuple[str, int], ...] | None = None  # a retry's earlier endpoints, copied
        # What lives on after the exchange anyway: names of the side and service, the pool's key.
        self.side = ""
        self.source = ""
        self.destination: str | None = None
        self.key: Any = None
        self.reason = ""
        self.status = 0
        self.attempts = 0
        self.t0 = 0.0
        self.sent = 0.0
        self.head = 0.0
        self.end = 0.0

    def fill(self, ex: Exchange, status: int, reason: str, pack: Callable[..., None]) -> None:
        """Overwrite every field with ex's: nothing of the exchange this slot held before is left."""
        h = ex.head
        rid = ex.request_id
        if rid is None and h is not None:
            rid = h.rid
        tp_in = h.tp if h is not None else None
        tp_out = ex.traceparent
        method = ex.method
        url = ex.url
        self.rid_n = min(len(rid), MAX_ID) if rid is not None else -1
        self.tp_in = tp_in is not None
        self.tp_out = tp_out is not None
        if len(method) <= MAX_METHOD:
            self.method_n = len(method)
            self.method = None
        else:
            self.method_n = 0
            self.method = method
        self.path_n = min(len(url), MAX_PATH)
        pack(self.buf, 0, rid or b"", tp_in or b"", tp_out or b"", method, url)
        self.span = ex.span_id
        self.tracestate = ex.tracestate
        conn = ex.conn
        side = conn.side
        self.side = side.name
        r = ex.routed
        if r is not None:
            self.source = r.link.source
            self.key = r.pool.key
        else:
            self.source = side.source
            self.key = None
        self.destination = ex.service
        self.status = status
        self.reason = reason
        self.t0 = ex.t0
        self.sent = ex.sent_at
        self.head = ex.head_at
        self.end = conn.last_active  # exchange_done set it to the time it ended
        self.attempts = ex.attempts
        tried = ex.tried
        self.tried = tuple(tried) if tried is not None else None  # the exchange's own set may still change
        e = ex.error
        self.message = e[1] if e is not None else ""
        peer_error: bytes | None = None
        if status >= 500 and not reason:
            up = ex.upstream
            rh = up.reader.rh if up is not None else None  # the response head the codec read last
            if rh is not None:
                peer_error = rh.error  # the next hop's own error (it names its hop), if it made one
        self.peer_error = peer_error

    def rid(self) -> bytes | None:
        n = self.rid_n
        return bytes(self.buf[:n]) if n >= 0 else None

    def trace_id(self) -> bytes | None:
        """The trace id of the traceparent sent on, else of the one that came in (as trace_id of a Rec)."""
        if self.tp_out:
            return bytes(self.buf[_TP_OUT + 3:_TP_OUT + 35])
        if self.tp_in:
            return bytes(self.buf[_TP_IN + 3:_TP_IN + 35])
        return None

    def rec(self) -> Rec:
        """This slot as a record with bytes of its own, for whoever keeps it past the next turn of its ring."""
        b = self.buf
        r = Rec()
        r.rid = self.rid()
        r.tp_in = bytes(b[_TP_IN:_TP_IN + TP]) if self.tp_in else None
        r.tp_out = bytes(b[_TP_OUT:_TP_OUT + TP]) if self.tp_out else None
        m = self.method
        r.method = m if m is not None else bytes(b[_METHOD:_METHOD + self.method_n])
        r.path = bytes(b[_PATH:_PATH + self.path_n])
        r.span = self.span
        r.tracestate = self.tracestate
        r.side = self.side
        r.source = self.source
        r.destination = self.destination
        r.status = self.status
        r.reason = self.reason
        r.t0 = self.t0
        r.sent = self.sent
        r.head = self.head
        r.end = self.end
        r.attempts = self.attempts
        r.key = self.key
        r.tried = self.tried
        r.message = self.message
        r.peer_error = self.peer_error
        return r


class Ring:
    """Two rings of slots: requests that went well, and failures (kept longest)."""

    def __init__(self, recent: int = RECENT, failed: int = FAILED) -> None:
        # Slots are made the first time each is used, so that an idle proxy holds none.
        self.recent: list[Slot | None] = [None] * recent
        self.failed: list[Slot | None] = [None] * failed
        self.i = 0
        self.j = 0
        self.pack: Callable[..., None] = _LAYOUT.pack_into  # bound once: a method lookup per call is a dict walk
        # Told of every record when spans are exported (spans.Exporter.add); None otherwise.
        self.spans: Any = None

    def observe(self, ex: Exchange, status: int, reason: str) -> None:
        if status >= 500 or reason:
            ring = self.failed
            k = self.j
            self.j = k + 1 if k + 1 < len(ring) else 0
        else:
            ring = self.recent
            k = self.i
            self.i = k + 1 if k + 1 < len(ring) else 0
        slot = ring[k]
        if slot is None:
            slot = ring[k] = Slot()
        slot.fill(ex, status, reason, self.pack)
        s = self.spans
        if s is not None:
            s.add(slot.rec())  # OTLP export on: a record per request, as the exporter's queue keeps it

    def find(self, ident: bytes) -> list[Rec]:
        """The records of a request id, or of a trace id (32 hex digits): oldest first."""
        out: list[Rec] = []
        trace = len(ident) == 32
        for ring in (self.failed, self.recent):
            for slot in ring:
                if slot is None:
                    continue
                if slot.rid() == ident or trace and slot.trace_id() == ident:
                    out.append(slot.rec())
        out.sort(key=_start)
        return out


def _start(rec: Rec) -> float:
    return rec.t0


def trace_id(rec: Rec) -> bytes | None:
    tp = rec.tp_out or rec.tp_in
    return tp[3:35] if tp is not None else None


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 3)


def row(rec: Rec, host: str, next_host: str | None, wall: float) -> dict[str, Any]:
    """A record as the trace ask sends it (wall: time.time() - time.monotonic(), now)."""
    tid = trace_id(rec)
    d: dict[str, Any] = {
        "host": host,
        "side": rec.side,
        "request_id": rec.rid.decode("latin-1") if rec.rid is not None else "",
        "trace_id": tid.decode() if tid is not None else "",
        "source": rec.source,
        "destination": rec.destination or "",
        "method": rec.method.decode("latin-1"),
        "path": rec.path.decode("latin-1"),
        "status": rec.status,
        "start": round(rec.t0 + wall, 6),
        "total_ms": _ms(rec.t0, rec.end),
        "attempts": rec.attempts,
    }
    if rec.sent:
        d["before_send_ms"] = _ms(rec.t0, rec.sent)
        if rec.head:
            d["upstream_head_ms"] = _ms(rec.sent, rec.head)
    if rec.span is not None:
        d["span_id"] = rec.span.decode()
    if rec.tp_in is not None:
        d["parent_span_id"] = rec.tp_in[36:52].decode()
    key = rec.key
    if key is not None:
        d["endpoint"] = f"{key.host}:{key.port}"
    if next_host:
        d["next_host"] = next_host
    if rec.reason:
        d["mesh_error"] = rec.reason
        d["error_message"] = rec.message
    if rec.peer_error is not None:
        d["peer_error"] = rec.peer_error.decode("latin-1")
    return d


def wall_offset() -> float:
    """What to add to a monotonic time to get a wall-clock one, now."""
    return time.time() - time.monotonic()
