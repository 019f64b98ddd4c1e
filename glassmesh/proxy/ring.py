"""The recent requests of one proxy process, always kept, for `glassmesh trace` (compiled with the hot path).

An observer of every finished exchange (told natively by each connection:
proxy/observer.py). It must cost next to nothing, since it is always on: its
records are made once, the first time each slot is used, and from then on each
finished exchange overwrites the oldest record's fields in place. No object is
made per request, and a record holds only numbers and the immutable bytes and
strings the exchange made anyway: never the exchange, its connection or anything
it may still change (the endpoints it tried are copied into a tuple, on a retry
only). It is turned into text only when someone asks (`row`).

Three rings, so that what an operator comes to look at is kept longest and what
every request pays for stays small:
- failed (FAILED): a 5xx or a mesh error;
- slow (SLOW): went well but took SLOW_S or more, end to end at this hop;
- recent (RECENT): the newest of the rest; only the newest BUSY_RECENT of them
  while the process is busy (BUSY_PER_S or more of them in the last second).

Why the ring of every request is short when busy: its cost is the memory it writes over,
not its instructions (about 1% of a request's, callgrind). Every request writes
its record over one a whole ring ago, cold, with the request's own bytes living
until then; with the pair of proxies pinned to one core and the app and client
on the other (wrk -t1 -c32, fresh pairs in turn, 3 to 5 runs each), CPU per
request over no ring was +11% with 2,048 records of every request, +4.4% with
256, +0.7% with 16 and within the noise with 128 and 64. Keeping one request in
16 past 1,024 a second (by trace id, so that the hops agree) in a ring of 2,048
still cost +5%, and copying each record into one preallocated buffer instead of
keeping its objects cost as much as the objects (unpinned runs): it is the span
of memory written in turn that costs. Slow requests and failures are rare
where the proxy is busy, so their rings cost nothing per fast request. Below
BUSY_PER_S a second the long ring costs the same share of each request, but of
little CPU, and it keeps tens of seconds of history at the demo's rates.

A record is overwritten when its ring goes round: whoever keeps one past the
moment it was handed out (the trace ask, the span exporter's queue) keeps a
copy (Rec.copy, Ring.find).

Bounded: RECENT + SLOW + FAILED records, each holding at most MAX_PATH bytes
of path, MAX_ID bytes of request id and two traceparents (55 bytes each): about
2 MiB at worst, whatever clients send. Times are the monotonic clock the request path reads;
they become wall-clock times when asked (`rows`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final, cast

from glassmesh.proxy.observer import Observer

if TYPE_CHECKING:
    from glassmesh.proxy.http import Exchange

RECENT: Final = 2048  # the newest requests that went well, while the process is not busy
BUSY_RECENT: Final = 128  # ... and while it is: past BUSY_PER_S of them in the last second
BUSY_PER_S: Final = 1024
SLOW: Final = 1024  # requests that went well but took SLOW_S or more (the ones people come to look at)
FAILED: Final = 1024  # failed requests (5xx, mesh errors): kept longest
SLOW_S: Final = 0.1
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
    """Three rings of Rec: the newest requests that went well, slow ones, and failures (kept longest)."""

    def __init__(self, recent: int = RECENT, failed: int = FAILED, slow: int = SLOW) -> None:
        # Slots are made the first time each is used, so that an idle proxy holds none.
        self.recent: list[Rec | None] = [None] * recent
        self.failed: list[Rec | None] = [None] * failed
        self.slow: list[Rec | None] = [None] * slow
        self.i = 0
        self.j = 0
        self.k = 0
        # The ring of recent requests wraps at `size`: all of it, or BUSY_RECENT while busy.
        self.size = recent
        self.busy_size = min(BUSY_RECENT, recent)
        self.second_ends = 0.0  # the end of the second `count` counts
        self.count = 0  # requests that went well, this second
        # Told of every record when spans are exported (spans.Exporter.add, which keeps a copy); None otherwise.
        self.spans: Any = None

    def observe(self, exchange: Any, status: int, reason: str) -> None:
        ex = cast("Exchange", exchange)  # (Observer's signature: it cannot name Exchange)
        if status >= 500 or reason:
            ring = self.failed
            k = self.j
            self.j = k + 1 if k + 1 < len(ring) else 0
        elif ex.conn.last_active - ex.t0 >= SLOW_S:  # exchange_done set last_active to the time it ended
            ring = self.slow
            k = self.k
            self.k = k + 1 if k + 1 < len(ring) else 0
        else:
            t = ex.t0
            if t >= self.second_ends:  # a new second: busy or not, by the last one
                self._resize(self.busy_size if self.count >= BUSY_PER_S else len(self.recent))
                self.second_ends = t + 1.0
                self.count = 0
            self.count += 1
            ring = self.recent
            k = self.i
            self.i = k + 1 if k + 1 < self.size else 0
        rec = ring[k]
        if rec is None:
            rec = ring[k] = Rec()
        rec.fill(ex, status, reason)
        s = self.spans
        if s is not None:
            s.add(rec)

    def _resize(self, size: int) -> None:
        """Wrap the recent ring at `size`; the records past it are let go, not kept.

        Kept, the records of a quiet second stayed in the heap once the process was busy, and cost
        almost as much as writing over them (+8% CPU per request against +0.4% without them).
        """
        if size < self.size:
            recent = self.recent
            for x in range(size, len(recent)):
                recent[x] = None
            if self.i >= size:
                self.i = 0
        self.size = size

    def find(self, ident: bytes) -> list[Rec]:
        """Copies of the records of a request id, or of a trace id (32 hex digits): oldest first."""
        out: list[Rec] = []
        trace = len(ident) == 32
        for ring in (self.failed, self.slow, self.recent):
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
