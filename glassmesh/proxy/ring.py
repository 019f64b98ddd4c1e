"""The recent requests of one proxy process, always kept, for `glassmesh trace` (compiled with the hot path).

An observer of every finished exchange (Runtime.observers). It must cost next
to nothing, since it is always on: a record holds references to what the
exchange made anyway (its id, method, path, times, pool key) and is turned
into text only when someone asks. Records of failures (a 5xx, a mesh error)
go to a ring of their own, so that a burst of successes does not push out the
error an operator came to look at.

Bounded: RECENT + FAILED records, each holding at most MAX_PATH bytes of path,
MAX_ID bytes of request id and a traceparent (55 bytes): a few MiB at worst,
whatever clients send. Times are the monotonic clock the request path reads;
they become wall-clock times when asked (`rows`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from glassmesh.proxy.http import Exchange

RECENT: Final = 2048  # records of requests that did not fail
FAILED: Final = 1024  # records of failed requests (5xx, mesh errors): kept longest
MAX_PATH: Final = 256
MAX_ID: Final = 128


class Rec:
    """One finished exchange as the proxy saw it: references, no formatting."""

    def __init__(self, ex: Exchange, status: int, reason: str) -> None:
        rid = ex.request_id
        if rid is None and ex.head is not None:
            rid = ex.head.rid
        if rid is not None and len(rid) > MAX_ID:
            rid = rid[:MAX_ID]
        self.rid: bytes | None = rid
        h = ex.head
        self.tp_in: bytes | None = h.tp if h is not None else None
        self.tp_out: bytes | None = ex.traceparent
        self.span: bytes | None = ex.span_id
        self.tracestate: bytes | None = ex.tracestate
        conn = ex.conn
        side = conn.side
        self.side: str = side.name
        r = ex.routed
        self.source: str = r.link.source if r is not None else side.source
        self.destination: str | None = ex.service
        self.method: bytes = ex.method
        url = ex.url
        self.path: bytes = url if len(url) <= MAX_PATH else url[:MAX_PATH]
        self.status = status
        self.reason = reason
        self.t0: float = ex.t0
        self.sent: float = ex.sent_at
        self.head: float = ex.head_at
        self.end: float = conn.last_active  # exchange_done set it to the time it ended
        self.attempts: int = ex.attempts
        self.key: Any = r.pool.key if r is not None else None
        self.tried: set[tuple[str, int]] | None = ex.tried  # endpoints of earlier tries (None: one try)
        e = ex.error
        self.message: str = e[1] if e is not None else ""
        self.peer_error: bytes | None = None
        if status >= 500 and not reason:
            up = ex.upstream
            rh = up.reader.rh if up is not None else None  # the response head the codec read last
            if rh is not None:
                self.peer_error = rh.error  # the next hop's own error (it names its hop), if it made one


class Ring:
    """Two rings of Rec: requests that went well, and failures (kept longest)."""

    def __init__(self, recent: int = RECENT, failed: int = FAILED) -> None:
        self.recent: list[Rec | None] = [None] * recent
        self.failed: list[Rec | None] = [None] * failed
        self.i = 0
        self.j = 0
        # Told of every record when spans are exported (spans.Exporter.add); None otherwise.
        self.spans: Any = None

    def observe(self, ex: Exchange, status: int, reason: str) -> None:
        rec = Rec(ex, status, reason)
        if status >= 500 or reason:
            j = self.j
            self.failed[j] = rec
            j += 1
            self.j = j if j < len(self.failed) else 0
        else:
            i = self.i
            self.recent[i] = rec
            i += 1
            self.i = i if i < len(self.recent) else 0
        s = self.spans
        if s is not None:
            s.add(rec)

    def find(self, ident: bytes) -> list[Rec]:
        """The records of a request id, or of a trace id (32 hex digits): oldest first."""
        out: list[Rec] = []
        trace = len(ident) == 32
        for ring in (self.failed, self.recent):
            for rec in ring:
                if rec is None:
                    continue
                if rec.rid == ident or trace and trace_id(rec) == ident:
                    out.append(rec)
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
