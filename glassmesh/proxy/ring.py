"""The recent requests of one proxy process, always kept, for `glassmesh trace` (compiled with the hot path).

An observer of every finished exchange (Runtime.observers). It must cost next
to nothing, since it is always on: its records are made once, the first time
the ring goes round, and from then on each finished exchange overwrites the
oldest record's fields in place. No object is made or freed per request (a
record made per request and freed 3,072 requests later cost about 350 more
instructions), the garbage collector never sees a new one (it ran about once
per 10,000 requests either way: bench/gc_per_request.py), and a record holds
only numbers and the immutable bytes and strings the exchange made anyway:
never the exchange, its connection or anything it may still change (the
endpoints it tried are copied into a tuple, on a retry only). It is turned
into text only when someone asks (`row`). Records of failures (a 5xx, a mesh
error) go to a ring of their own, so that a burst of successes does not push
out the error an operator came to look at.

What it still costs, past the call and the stores, is those bytes (request
id, traceparents, method, path: four small objects a request) living for
3,072 requests instead of one: each request frees cold ones, and the
allocator's pools mix lifetimes. Copying them into a buffer of the slot's own
with struct.pack_into cost more instructions than it saved (+1,600 against
+1,000 a request); a cheaper copy is the next step.

A record is overwritten when its ring goes round: whoever keeps one past the
moment it was handed out (the trace ask, the span exporter's queue) keeps a
copy (Rec.copy, Ring.find).

Bounded: RECENT + FAILED records, each holding at most MAX_PATH bytes of path,
MAX_ID bytes of request id and a traceparent (55 bytes): a few MiB at worst,
whatever clients send. Times are the monotonic clock the request path reads;
they become wall-clock times when asked (`rows`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final, cast

from glassmesh.proxy.observer import Observer

if TYPE_CHECKING:
    from glassmesh.proxy.http import Exchange

RECENT: Final = 2048  # records of requests that did not fail
FAILED: Final = 1024  # records of failed requests (5xx, mesh errors): kept longest
MAX_PATH: Final = 256
MAX_ID: Final = 128


class Rec:
    """One finished exchange as the proxy saw it: scalars and immutable bytes, no formatting.

    Made blank once per ring slot, then filled in place (`fill`) by every exchange that lands there.
    """

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

    def fill(self, ex: Exchange, status: int, reason: str) -> None:
        """Overwrite every field with ex's: nothing of the exchange this slot held before is left."""
        h = ex.head
        rid = ex.request_id
        if rid is None and h is not None:
            rid = h.rid
        if rid is not None and len(rid) > MAX_ID:
            rid = rid[:MAX_ID]
        self.rid = rid
        self.tp_in = h.tp if h is not None else None
        self.tp_out = ex.traceparent
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
        self.method = ex.method
        url = ex.url
        self.path = url if len(url) <= MAX_PATH else url[:MAX_PATH]
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

    def copy(self) -> Rec:
        """This record as it is now, for whoever keeps it past the next turn of its ring."""
        c = Rec()
        c.rid = self.rid
        c.tp_in = self.tp_in
        c.tp_out = self.tp_out
        c.span = self.span
        c.tracestate = self.tracestate
        c.side = self.side
        c.source = self.source
        c.destination = self.destination
        c.method = self.method
        c.path = self.path
        c.status = self.status
        c.reason = self.reason
        c.t0 = self.t0
        c.sent = self.sent
        c.head = self.head
        c.end = self.end
        c.attempts = self.attempts
        c.key = self.key
        c.tried = self.tried
        c.message = self.message
        c.peer_error = self.peer_error
        return c


class Ring(Observer):
    """Two rings of Rec: requests that went well, and failures (kept longest)."""

    def __init__(self, recent: int = RECENT, failed: int = FAILED) -> None:
        # Slots are made the first time each is used, so that an idle proxy holds none.
        self.recent: list[Rec | None] = [None] * recent
        self.failed: list[Rec | None] = [None] * failed
        self.i = 0
        self.j = 0
        # Told of every record when spans are exported (spans.Exporter.add, which keeps a copy); None otherwise.
        self.spans: Any = None

    def observe(self, exchange: Any, status: int, reason: str) -> None:
        ex = cast("Exchange", exchange)  # (Observer's signature: it cannot name Exchange)
        if status >= 500 or reason:
            ring = self.failed
            k = self.j
            self.j = k + 1 if k + 1 < len(ring) else 0
        else:
            ring = self.recent
            k = self.i
            self.i = k + 1 if k + 1 < len(ring) else 0
        rec = ring[k]
        if rec is None:
            rec = ring[k] = Rec()
        rec.fill(ex, status, reason)
        s = self.spans
        if s is not None:
            s.add(rec)

    def find(self, ident: bytes) -> list[Rec]:
        """Copies of the records of a request id, or of a trace id (32 hex digits): oldest first."""
        out: list[Rec] = []
        trace = len(ident) == 32
        for ring in (self.failed, self.recent):
            for rec in ring:
                if rec is None:
                    continue
                if rec.rid == ident or trace and trace_id(rec) == ident:
                    out.append(rec.copy())
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
