"""HTTP/1.1 proxying: a client-facing connection, an upstream connection, and the exchange between them.

Both proxy sides use these classes; a Side object decides where a request
goes and what the mesh adds to it (outbound: request id, trace context;
inbound: the caller's identity). The path of one request:

  ServerConn (the codec's request events) -> Side.route -> Pool (reuse or connect)
  -> UpstreamConn (write head, stream body and trailers; the codec's response events)
  -> ServerConn (write response)

Bytes are read into events by protocols/http1_codec.py (sans-IO, on llhttp);
these classes act on the events and do the I/O.

No task and no timer per request: timeouts are checked by one sweeper per
process (see runtime.py), and writes made while handling one read are
gathered and sent in one system call at the end of that read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

from glassmesh.protocols.errors import REASONS as ERROR_REASONS
from glassmesh.protocols.errors import error_response
from glassmesh.protocols.http1 import (
    ERROR_HEADER,
    HOP_BY_HOP,
    LAST_CHUNK,
    TRAIL_HEADER,
    BadMessage,
    Framing,
    RequestHead,
    ResponseHead,
    chunk,
    last_chunk,
    new_request_id,
    new_request_id_and_traceparent,
    new_span_id,
    new_traceparent,
    status_line,
)
from glassmesh.protocols.http1_codec import Events, RequestReader, ResponseReader
from glassmesh.protocols.http2 import Refusal
from glassmesh.protocols.message import Response
from glassmesh.protocols.mux import REFUSED_GOAWAY
from glassmesh.protocols.mux_head import MINOR_BINARY_HEAD, encode_request, encode_response
from glassmesh.proxy.budget import Budget
from glassmesh.proxy.connector import ConnectError
from glassmesh.proxy.log import defect
from glassmesh.proxy.mirroring import send_copy
from glassmesh.proxy.mux import MuxConnection, Stream, StreamUser
from glassmesh.proxy.observer import Observer
from glassmesh.proxy.pool import Pool, PooledConn
from glassmesh.proxy.refusal import Http2Refuser
from glassmesh.proxy.tcp import FramedSide, PlainSide, Relay

if TYPE_CHECKING:
    from glassmesh.proxy.chain import ServiceChain
    from glassmesh.proxy.linkstats import LinkStats
    from glassmesh.proxy.runtime import Runtime
    from glassmesh.proxy.stages.balance import Balancer
    from glassmesh.proxy.stages.endpoint import EndpointState
    from glassmesh.proxy.stages.overload import Limits
    from glassmesh.proxy.stages.route import CompiledRoute

# One clock for everything on the request path, read once per event (a read is
# a call, a vDSO clock_gettime and a float): CLOCK_MONOTONIC, as time.perf_counter
# is on Linux.
_mono = time.monotonic
HIGH_WATER = 256 * 1024
_FORWARD_1XX = (100, 102, 103)
MAX_TRIES = 3
# A request is replayed after a reset (its connection closed before any byte of the answer) at
# most this many times per side: one attempt more, as nginx and Envoy do by default.
MAX_REPLAYS = 1
# Methods that mean the same when sent twice (RFC 9110 9.2.2): only these are replayed once they
# may have reached an app. A POST that met a reset gets its 502: the app may have acted on it.
IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
# A peer inbound side's errors (glassmesh-error reason, then whether it may have reached an app):
# the first four are made before anything reached an app and are safe to send elsewhere for
# any method; upstream_reset (the app closed without answering, after the inbound's own replay)
# only for an idempotent one.
RETRYABLE_AT_INBOUND: Final = {
    b"connect_refused": False, b"connect_timeout": False, b"no_endpoints": False, b"misdirected": False,
    b"upstream_reset": True,
}
# What failed, for Side.retry (each side's one retry decision).
CONNECT_FAILED: Final = 1  # no connection: nothing was sent
RESET: Final = 2  # the connection closed before any byte of an answer
PEER_ERROR: Final = 3  # a peer proxy's inbound side answered with its own error (glassmesh-error)
STATUS: Final = 4  # the app (through its proxy) answered with a 5xx status
REFUSED: Final = 5  # a draining peer refused the stream after its GOAWAY: no app saw it (any method may go again)
# An exchange's state (Exchange.state; the table in Exchange's docstring): one native int field,
# set at each transition, so that a test, a tap or a debugger reads where an exchange is without
# inferring it from a dozen fields.
QUEUED: Final = 0  # its head is read; it waits its turn (pipelined) or is being routed
ROUTED: Final = 1  # a Side routed it: a connection is being taken or opened (or fault injection holds it)
SENT: Final = 2  # its head went to the next hop; its body follows, the answer is awaited
HEAD_BACK: Final = 3  # the answer's head went to the client; its body follows
TUNNEL: Final = 4  # answered 101: both connections handed to a byte relay (tcp.Relay)
DONE: Final = 5  # answered whole; the observers were told
FAILED: Final = 6  # answered with a mesh error, or cut short (reset, timeout); the observers were told
ABANDONED: Final = 7  # the client left before its answer; what it held was let go
STATE_NAMES: Final = ("queued", "routed", "sent", "head_back", "tunnel", "done", "failed", "abandoned")


class Routed:
    """Where a request goes, decided by a Side."""

    __slots__ = ("pool", "link", "service", "extra")

    def __init__(self, pool: Pool, link: LinkStats, service: str, extra: list[bytes]) -> None:
        self.pool = pool
        self.link = link
        self.service = service
        self.extra = extra  # fields (flat: name, value, ...) the side adds to every request


class Side:
    """Routing and decoration policy of one listener; subclassed by outbound and inbound."""

    name = "side"
    name_b = b"side"
    # Request headers never forwarded from this side's clients.
    drop: frozenset[bytes] = HOP_BY_HOP
    # Response headers never forwarded to this side's clients (hop-by-hop and handled ones).
    drop_response: frozenset[bytes] = HOP_BY_HOP | {TRAIL_HEADER}
    # Whether the next hop's glassmesh-trail is ours to extend (it is when the next hop is a mesh proxy).
    trust_trail = False
    source = ""  # the calling service (outbound: the local app's; inbound: the peer's)
    budget: Budget  # the connections this side's callers may hold (set by each side; see budget.py)

    def route(self, ex: Exchange) -> Routed | tuple[str, str]:
        """A Routed, or (reason, message) for a mesh error. May rewrite ex.url and ex.headers."""
        raise NotImplementedError

    def retry(self, ex: Exchange, cause: int, status: int, reason: bytes) -> Routed | None:
        """Where a failed try goes again (cause: CONNECT_FAILED, RESET, PEER_ERROR or STATUS), or None.

        The one place a side decides a retry; it counts the attempt and the retry metric.
        """
        return None

    def link_for(self, service: str | None) -> LinkStats | None:
        return None


class Exchange:
    """One request and its response.

    No __slots__: most fields keep their class-level default for the whole
    exchange, and setting two dozen slots per request cost more than a dict.

    The states one exchange passes through, with the events that move it (see
    README "Layout"). `state` holds the coarse one (QUEUED, ROUTED, SENT, HEAD_BACK,
    TUNNEL, DONE, FAILED, ABANDONED: the constants above), set at each transition;
    the finer ones below it are read from the fields named. Events from the codec
    (protocols/http1_codec.py) are in capitals.

    | state      | `state`   | what holds it                           | event                       | next                       |
    |------------|-----------|-----------------------------------------|-----------------------------|----------------------------|
    | (head)     | -         | the codec: reader.in_head, no exchange  | HEAD                        | queued, or routing if first|
    |            |           |                                         | ERROR, request timeout      | answered (400/431/408)     |
    | queued     | QUEUED    | in conn.queue behind another (pipelined)| the one before it finishes  | routing                    |
    | routing    | QUEUED    | Side.route (synchronous)                | Routed / (reason, message)  | held, sending; answered    |
    | held       | ROUTED    | routed, delay set (fault injection)     | the delay's timer           | sending                    |
    | connecting | ROUTED    | routed, no upstream (a connect task)    | connected / ConnectError    | sending; retry or answered |
    | sending    | SENT      | upstream set, upstream.sending is ex    | DATA, END (+ trailers)      | awaiting                   |
    | awaiting   | SENT      | req_done, upstream set, no answer yet   | INTERIM (1xx)               | awaiting (100/102/103 sent)|
    |            |           |                                         | HEAD 101 (asked to upgrade) | tunnel                     |
    |            |           |                                         | HEAD 5xx/421, Side.retry    | retrying                   |
    |            |           |                                         | HEAD                        | responding                 |
    |            |           |                                         | reset before any byte       | connecting (replay) or 502 |
    | retrying   | SENT      | upstream.retry_to (its body dropped)    | END                         | sending (or connecting)    |
    | responding | HEAD_BACK | resp_started                            | DATA, END (+ trailers)      | done                       |
    |            |           |                                         | reset, ERROR, timeout       | done, client closed        |
    | tunnel     | TUNNEL    | both connections handed to tcp.Relay    | -                           | -                          |
    | answered   | FAILED    | a mesh error written (_mesh_error)      | -                           | done                       |
    | done       | DONE      | exchange_done told the observers once   | finish                      | the next queued one routes |
    | abandoned  | ABANDONED | cancelled: the client left              | connection_lost             | (its holds let go)         |

    A retry or a replay goes back to ROUTED (and to SENT when the next try starts).
    """

    state = QUEUED  # the coarse state (the table above; STATE_NAMES names it)
    head: RequestHead | None = None
    method = b""
    http10 = False
    keep_alive = True
    upgrade = False
    framing = Framing.NONE
    head_done = False
    req_done = False
    pending_bytes = 0
    routed: Routed | None = None
    upstream: UpstreamConn | None = None
    error: tuple[str, str, int | None] | None = None
    sent_at = 0.0
    head_at = 0.0  # when the next hop's response head arrived (the trace ring's phases)
    traceparent: bytes | None = None  # the one sent to the next hop
    span_id: bytes | None = None  # this hop's own span (spans exported only)
    tracestate: bytes | None = None  # as it came, for this hop's span (spans exported only)
    resp_started = False
    resp_chunked = False
    request_id: bytes | None = None
    up_chunked = False
    service: str | None = None
    cancelled = False
    head_size = 0
    up_fields: list[bytes] | None = None  # the next hop's request fields, made once: a retry sends the same
    tried: set[tuple[str, int]] | None = None  # endpoints this request was already sent toward
    replays = 0  # times this request was sent again after a reset (bounded by MAX_REPLAYS)
    body_sent = False  # whether any of its body went to the next hop (a body is never kept to be sent again)
    # The outbound chain's decisions (see chain.py): set by OutboundSide.route.
    chain: ServiceChain | None = None  # the destination's stages; set once its limits admitted the request
    route: CompiledRoute | None = None
    subset = b""
    balancer: Balancer | None = None
    ep: EndpointState | None = None  # the endpoint of the try under way (begun, not yet ended)
    attempts = 1  # tries so far, the first included
    delay = 0.0  # fault injection: seconds to hold the request before sending it
    status_hint = 0  # fault injection: the status of an abort
    timer: asyncio.TimerHandle | None = None  # the route's timeouts, when it sets any
    mirror: Routed | None = None  # where a copy of this request goes (its route mirrors a share)
    rec: Recording | None = None  # its last try's bytes, only while a tap asks for them (tap.py)
    req_bytes = 0  # body bytes sent on toward the next hop
    resp_bytes = 0  # body bytes of the answer passed back to the client
    passed_error: tuple[str, str] | None = None  # (reason, hop) of a peer's error passed on to the client
    trailers: list[bytes] | None = None  # the request body's trailer fields that may cross (message.py)

    def __init__(self, conn: ServerConn, url: bytes, t0: float) -> None:
        self.conn = conn
        self.url = url
        self.pending: list[bytes] = []
        self.t0 = t0  # when the read that began the request arrived


class Recording:
    """The bytes one try of an exchange sent to its next hop and got back, kept only while a tap wants them.

    A tap with `--body N`, or a capture, puts its byte limit in Runtime.recording; while that
    list is empty (nobody taps bodies) no Recording is made and the request path pays two
    None checks. Each direction keeps its first `limit` bytes, with the wall time of each
    read or write (a capture's packet times), and counts the rest (`more_*`, ended at `t_last`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[tuple[float, bool, bytes]] = []  # (time, sent by us, bytes kept)
        self.kept_sent = 0
        self.kept_got = 0
        self.more_sent = 0  # bytes past the limit, not kept
        self.more_got = 0
        self.t_last = 0.0

    def add(self, sent: bool, data: bytes) -> None:
        now = time.time()
        self.t_last = now
        kept = self.kept_sent if sent else self.kept_got
        room = self.limit - kept
        n = len(data)
        if room <= 0:
            if sent:
                self.more_sent += n
            else:
                self.more_got += n
            return
        if n > room:
            if sent:
                self.more_sent += n - room
            else:
                self.more_got += n - room
            data = data[:room]
            n = room
        if sent:
            self.kept_sent += n
        else:
            self.kept_got += n
        self.chunks.append((now, sent, data))


class Client(StreamUser):
    """What an UpstreamConn asks of the client connection it answers: nothing else of it.

    ServerConn (an HTTP/1.1 client) is the one implementation today; an HTTP/2 client's
    stream can be another, and the upstream side serves it unchanged. Methods only, no
    fields: mypyc lays out a subclass's fields apart from a base's (see PooledConn.rides_on),
    and calls through this base stay native (mypyc vtable).
    """

    def clock(self) -> float:
        """When the read being handled arrived (one clock read per event)."""
        raise NotImplementedError

    def recording(self) -> list[int]:
        """[byte limit] while a tap wants the bytes of each try (tap.py), else empty."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def pause(self, bit: int) -> None:
        raise NotImplementedError

    def resume(self, bit: int) -> None:
        raise NotImplementedError

    def upstream_fields(self, ex: Exchange) -> list[bytes]:
        raise NotImplementedError

    def build_response_head(self, ex: Exchange, status: int, rh: ResponseHead, framing: int, length: int,
                            now: float) -> bytes:
        raise NotImplementedError

    def exchange_done(self, ex: Exchange, status: int, reason: str, ok: bool, now: float = 0.0) -> None:
        raise NotImplementedError

    def finish(self, ex: Exchange, close: bool) -> None:
        raise NotImplementedError

    def fail(self, ex: Exchange, reason: str, msg: str) -> None:
        raise NotImplementedError

    def cut_short(self, ex: Exchange, status: int, reason: str) -> None:
        raise NotImplementedError

    def retry(self, ex: Exchange, cause: int, status: int, reason: bytes) -> Routed | None:
        raise NotImplementedError

    def send_again(self, ex: Exchange, r: Routed, pooled: bool) -> None:
        raise NotImplementedError

    def detach(self) -> Any:
        raise NotImplementedError


class ServerConn(Client):
    """A connection from a client (an app on outbound, a peer proxy on inbound)."""

    def __init__(self, rt: Runtime, side: Side, link: LinkStats | None = None) -> None:
        self.rt = rt
        self.side = side
        self.link = link
        self.logging: bool = rt.logging  # fixed for the process; read per response without a lookup on rt
        self.spans: bool = rt.spans  # whether this hop makes its own span (OTLP export configured)
        # What else is told of each finished exchange (tap, OpenTelemetry): the runtime's list, read natively.
        self.observers: list[Callable[[Exchange, int, str], None]] = rt.observers
        # The trace ring (proxy/ring.py), told of every exchange by a native call (proxy/observer.py); None: off.
        self.ring: Observer | None = rt.ring
        # [byte limit] while a tap wants the bytes of each try (tap.py), else empty: shared with the runtime.
        self.recording_limit: list[int] = rt.recording
        self.transport: Any = None
        self.t_write: Callable[[bytes], None] = _no_write
        self.reader = RequestReader(rt.limits.max_head_bytes, rt.limits.max_headers, _ClientEvents(self))
        self.handed_off = False  # to a responder that answers an HTTP/2 client
        # A list, not a deque: its append and del [0] are native, a deque's are method lookups; it
        # holds more than one exchange only when a client pipelines.
        self.queue: list[Exchange] = []
        self.parsing: Exchange | None = None
        self.wbuf: list[bytes] = []
        self.closing = False
        self.paused = 0  # bit 1: pipelining, bit 2: body backpressure
        self.now = self.last_active = _mono()
        self.head_started = 0.0  # when the read that began a head still incomplete arrived (0: none is)
        self.write_blocked = 0.0  # when the client stopped reading what we write (0: it reads)
        self.trail_prefix = rt.host_b + b"/" + side.name_b + b";dur="
        self.binary_out = False  # responses may go as binary heads: a mux stream from a peer that reads them

    # --- asyncio plumbing -------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.t_write = transport.write  # bound once (see __init__)
        if isinstance(transport, Stream):  # a peer proxy's stream (inbound): binary heads both ways when it reads them
            self.reader.read_binary()
            self.binary_out = transport.conn.peer_version & 0xFFFF >= MINOR_BINARY_HEAD
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.rt.conns.add(self)
        self.rt.stats.client_conns += 1
        b = self.side.budget
        b.count += 1  # counted even when over, so that connection_lost's decrement stays exact
        if b.count > b.limit:
            self.count_error(None, "overloaded")
            transport.write(error_response("overloaded", host=self.rt.host, side=self.side.name, close=True))
            transport.close()
        if self.link is not None:
            self.link.open_conns += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closing = True
        if self in self.rt.conns:  # not handed to a relay (detach, below, counted it out already)
            self.side.budget.count -= 1
        self.rt.conns.discard(self)
        self.rt.stats.client_conns -= 1
        if self.link is not None:
            self.link.open_conns -= 1
        for ex in self.queue:
            ex.cancelled = True
            up = ex.upstream
            if up is not None:
                up.abort()
            self.exchange_abandoned(ex)
        self.queue.clear()
        self.parsing = None
        self.reader.release()  # no reference cycle left: freed now, not by the cyclic collector

    def data_received(self, data: bytes) -> None:
        now = self.now = self.last_active = _mono()
        r = self.reader
        r.feed(data)  # its events call _request_head, _request_data, ... (see _ClientEvents)
        if self.handed_off:
            return
        if r.in_head and not self.head_started:
            self.head_started = now  # a head under way: the runtime's sweeper times it
        self.flush()

    def _preface(self, rest: bytes) -> None:
        if not self.queue:
            self._refuse_http2(rest)
        else:
            self._parse_error(BadMessage("malformed request: the HTTP/2 preface after HTTP/1.1 requests"))

    def eof_received(self) -> bool | None:
        # A client that half-closes after its request still gets its answer.
        if not self.queue:
            return None
        self.closing = True
        return True

    def pause_writing(self) -> None:
        self.write_blocked = _mono()
        for ex in self.queue:
            if ex.upstream is not None:
                ex.upstream.pause_read()

    def resume_writing(self) -> None:
        self.write_blocked = 0.0
        for ex in self.queue:
            if ex.upstream is not None:
                ex.upstream.resume_read()

    def write(self, data: bytes) -> None:
        self.wbuf.append(data)

    def between_requests(self) -> bool:
        """Whether it answered a request and no other has begun: closing it now loses nothing."""
        r = self.reader
        return not self.queue and bool(r.method) and not r.in_head

    def going_away(self) -> None:
        """Its peer connection sent GOAWAY (this proxy drains): the response in flight says `connection: close`.

        An idle one stays: the caller closes it on GOAWAY (closing it here would
        race a request the caller is sending on it).
        """
        self.closing = True

    def flush_writes(self) -> None:
        wb = self.wbuf
        if wb and self.transport is not None:
            self.t_write(b"".join(wb) if len(wb) > 1 else wb[0])
            self.wbuf = []

    def flush(self) -> None:
        wb = self.wbuf
        if wb and self.transport is not None:  # flush_writes, inline: this runs once per read
            self.t_write(b"".join(wb) if len(wb) > 1 else wb[0])
            self.wbuf = []
        for ex in self.queue:
            up = ex.upstream
            if up is not None and up.wbuf and not up.lost:
                up.flush()
        if self.closing and not self.queue and not self.transport.is_closing():
            self.transport.close()

    def pause(self, bit: int) -> None:
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= bit

    def resume(self, bit: int) -> None:
        if self.paused & bit:
            self.paused &= ~bit
            if not self.paused and not self.transport.is_closing():
                self.transport.resume_reading()

    # --- the codec's events (protocols/http1_codec.py) ----------------------------
    def _request_head(self, h: RequestHead) -> None:
        t0 = self.head_started or self.now
        self.head_started = 0.0
        ex = Exchange(self, h.target, t0)
        ex.head = h
        ex.method = h.method
        ex.keep_alive = h.keep_alive
        ex.upgrade = h.wants_upgrade
        ex.framing = h.body_framing
        ex.http10 = h.http10
        ex.head_done = True
        self.parsing = ex
        q = self.queue
        q.append(ex)
        if len(q) > 1:
            self.pause(1)
        elif q[0] is ex:
            self._dispatch(ex)

    def _request_data(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None  # the codec gives a head first
        up = ex.upstream
        if up is not None and up.sending is ex:
            up.send_body(body)
        elif ex.error is None:
            ex.pending.append(body)
            ex.pending_bytes += len(body)
            if ex.pending_bytes > HIGH_WATER:
                self.pause(2)

    def _request_end(self, trailers: list[bytes] | None) -> None:
        ex = self.parsing
        assert ex is not None
        self.parsing = None
        ex.req_done = True
        if trailers is not None:
            ex.trailers = trailers  # (set only then: a new key in the exchange's dict costs)
        up = ex.upstream
        if up is not None and up.sending is ex:
            up.end_body()

    # --- timeouts (called by the runtime's sweeper) ---------------------------
    def request_timeout(self) -> None:
        self.head_started = 0.0
        self.reader.stop()
        if self.queue:  # a pipelined head that did not arrive in time: nothing to answer it in order
            self.transport.close()
            return
        ex = Exchange(self, b"", self.now)
        ex.head_done = True
        self.queue.append(ex)
        ex.req_done = True
        ex.keep_alive = False
        self._mesh_error(ex, "request_timeout", "the request head did not arrive in time")
        self.flush()

    def response_timeout(self, ex: Exchange) -> None:
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        if not ex.req_done:
            ex.keep_alive = False
        self._mesh_error(ex, "response_timeout", f"no response within {self.rt.timeouts.response_ms} ms")
        self.flush()

    # --- request handling -------------------------------------------------
    def _refuse_http2(self, rest: bytes) -> None:
        """The client sent the HTTP/2 preface: hand the connection to a responder that tells it why it cannot be served."""
        rt = self.rt
        side = self.side.name
        self.count_error(None, "http2_not_supported")
        if self.logging:
            ex = Exchange(self, b"*", self.now)
            ex.method = b"PRI"
            rt.access_log(ex, 505, "http2_not_supported")
        self.parsing = None
        self.closing = True
        self.handed_off = True
        hop = f"http2_not_supported; hop={rt.host}/{side}".encode()
        refusal = Refusal(headers=[(ERROR_HEADER, hop)])
        transport = self.transport
        self.detach()
        responder = Http2Refuser(transport, refusal, rt.timeouts.head_ms / 1000)
        transport.set_protocol(responder)
        if rest:
            responder.data_received(rest)

    def _parse_error(self, e: BadMessage) -> None:
        """The codec cannot read on (it reads nothing more): answer the message in hand, or a new one, and close."""
        ex = self.parsing
        reason, msg, status = e.reason, str(e), e.status
        self.parsing = None
        self.closing = True
        # Nothing after a bad message can be trusted to start a new one.
        self.transport.pause_reading()
        if ex is None:
            r = self.reader
            ex = Exchange(self, r.url, self.head_started or self.now)
            self.head_started = 0.0
            if r.head_done:  # llhttp read the head; the rules on top of it refused it
                ex.method = r.method
                ex.http10 = r.http10
            ex.head_done = True
            self.queue.append(ex)
        ex.keep_alive = False
        ex.req_done = True
        if ex.resp_started:
            # The next hop already answered; all we can do is end both connections.
            if ex.upstream is not None:
                ex.upstream.abort()
            self.queue.clear()
            self.transport.close()
            return
        if ex.error is None:
            ex.error = (reason, msg, status)
        if ex.routed is not None:
            # Already on its way: whatever of it is still in our buffers never leaves.
            up = ex.upstream
            if up is not None:
                ex.upstream = None
                up.wbuf.clear()
                up.abort()
            ex.cancelled = True  # a connect under way returns its connection to the pool
            self._mesh_error(ex, reason, msg, status)
        elif self.queue[0] is ex:
            self._dispatch(ex)

    def _dispatch(self, ex: Exchange) -> None:
        if ex.error is not None:
            reason, msg, status = ex.error
            self._mesh_error(ex, reason, msg, status)
            return
        r = self.side.route(ex)
        if isinstance(r, tuple):
            self._mesh_error(ex, r[0], r[1])
            return
        ex.routed = r
        ex.state = ROUTED
        route = ex.route
        if route is not None and (route.timeout_s or route.idle_timeout_s):
            self._arm_timer(ex, route)
        if ex.delay:
            asyncio.get_running_loop().call_later(ex.delay, self._send_delayed, ex, r)
            return
        self._send(ex, r)

    def _send(self, ex: Exchange, r: Routed) -> None:
        conn = take(r.pool)
        if conn is not None:
            conn.start(ex)
            return
        chain = ex.chain
        if chain is not None:
            # overload: a request that must wait for a new connection is pending until it has one.
            refused = chain.limits.wait()
            if refused is not None:
                self._mesh_error(ex, refused, f"service {ex.service!r} is at its {refused} limit "
                                              f"({chain.limits.max_pending})")
                return
        self.rt.spawn(self._connect_and_start(ex, r, chain))

    def _send_delayed(self, ex: Exchange, r: Routed) -> None:
        """A request that fault injection held: it goes now, unless it ended meanwhile."""
        if ex.cancelled or ex.error is not None or ex.routed is not r:
            return
        self.now = _mono()
        self._send(ex, r)
        self.flush()

    # --- per-route timeouts ------------------------------------------------------
    def _arm_timer(self, ex: Exchange, route: CompiledRoute) -> None:
        """A timer for this exchange only, when its route sets a timeout (the sweeper keeps the snapshot-wide ones).

        One handle per exchange, re-armed only when an idle timeout finds bytes have moved:
        never one per read.
        """
        when = ex.t0 + route.timeout_s if route.timeout_s else 0.0
        if route.idle_timeout_s and (not when or self.now + route.idle_timeout_s < when):
            when = self.now + route.idle_timeout_s
        ex.timer = asyncio.get_running_loop().call_at(when, self._on_timer, ex)

    def _on_timer(self, ex: Exchange) -> None:
        ex.timer = None
        route = ex.route
        if ex.cancelled or route is None or (self.queue and ex not in self.queue):
            return
        now = _mono()
        total = route.timeout_s
        idle = route.idle_timeout_s
        if total and now >= ex.t0 + total - 0.0005:
            self._timed_out(ex, "response_timeout", f"route {route.name.decode()!r}: no complete response "
                                                    f"within {total * 1000:g} ms")
            return
        up = ex.upstream
        last = ex.sent_at or ex.t0
        if up is not None and up.now > last:
            last = up.now
        if now - last >= idle - 0.0005:
            self._timed_out(ex, "idle_timeout", f"route {route.name.decode()!r}: nothing from the next hop "
                                                f"for {idle * 1000:g} ms")
            return
        when = last + idle
        if total and ex.t0 + total < when:
            when = ex.t0 + total
        ex.timer = asyncio.get_running_loop().call_at(when, self._on_timer, ex)

    def _timed_out(self, ex: Exchange, reason: str, msg: str) -> None:
        up = ex.upstream
        ex.upstream = None
        if up is not None:
            up.abort()
        if ex.resp_started:
            # Part of the answer is out: all that is left is to end the client's connection.
            self.count_error(ex, reason)
            self.cut_short(ex, 504, reason)
            return
        if not ex.req_done:
            ex.keep_alive = False
        self._mesh_error(ex, reason, msg)
        self.flush()

    async def _connect_and_start(self, ex: Exchange, r: Routed, pending: ServiceChain | None = None) -> None:
        """A new connection for ex (no pooled one was idle, or a replay, which never takes a pooled one).

        pending: the destination whose max_pending counts ex until it has its connection.
        """
        try:
            await self._connect_and_start_counted(ex, r)
        finally:
            if pending is not None:
                pending.limits.waited()

    async def _connect_and_start_counted(self, ex: Exchange, r: Routed) -> None:
        chain = ex.chain
        while True:
            pool = r.pool
            if chain is not None:
                refused = chain.limits.connect()  # overload: the destination's connections, at this proxy
                if refused is not None:
                    if not ex.cancelled and ex.routed is r:
                        self._mesh_error(ex, refused, f"service {ex.service!r} is at its {refused} limit "
                                                      f"({chain.limits.max_connections})")
                        self.flush()
                    return
            try:
                _, conn = await pool.connect(partial(UpstreamConn, self.rt, pool))
                if chain is not None:
                    conn.limits = chain.limits  # counted until the connection closes
                break
            except ConnectError as e:
                if chain is not None:
                    chain.limits.closed()
                if ex.cancelled or ex.routed is not r:
                    return  # ended meanwhile (a client gone, a route timeout)
                # Nothing was sent yet, so another endpoint is always safe to try.
                nxt = self.side.retry(ex, CONNECT_FAILED, 0, e.reason.encode())
                if nxt is None:
                    self._mesh_error(ex, e.reason, str(e))
                    self.flush()
                    return
                r = ex.routed = nxt
                ex.state = ROUTED
        if ex.cancelled or ex.routed is not r:
            pool.put(conn)
            return
        self.now = _mono()  # the request leaves now, not when it arrived
        conn.start(ex)
        conn.flush()

    def _mesh_error(self, ex: Exchange, reason: str, msg: str, status: int | None = None) -> None:
        rt = self.rt
        side = self.side.name
        status = status or ex.status_hint or ERROR_REASONS.get(reason, (502, ""))[0]
        self.count_error(ex, reason)
        if ex.request_id is None:
            ex.request_id = (ex.head.rid if ex.head is not None else None) or new_request_id()
        if ex.error is None:
            ex.error = (reason, msg, status)  # a body still arriving is dropped, not buffered
        if not ex.req_done and ex.framing != Framing.NONE:
            ex.keep_alive = False
        close = not ex.keep_alive or self.closing
        now = _mono()
        trail = self.trail_prefix + duration_ms(now - ex.t0) + self.trail_route(ex)
        self.write(
            error_response(
                reason,
                host=rt.host,
                side=side,
                message=msg,
                service=ex.service,
                request_id=ex.request_id,
                status=status,
                close=close,
                trail=trail,
                attempts=ex.attempts,
            )
        )
        self.exchange_done(ex, status, reason, False, now)
        self.finish(ex, close)

    def count_error(self, ex: Exchange | None, reason: str, hop: str = "") -> None:
        """glassmesh_mesh_errors_total: a response the mesh made (here, or at the peer named by hop), sent
        to this side's client, with the link it was on (off the common path: errors only)."""
        side = self.side
        dst = ex.service if ex is not None else None
        if side.name == "inbound":
            dst = getattr(side, "destination", "")
        elif dst is not None and dst not in self.rt.table.remotes:
            dst = ""  # a name that is not in the mesh: whatever an app asked for is no label value
        self.rt.stats.error(side.name, reason, getattr(side, "source", ""), dst or "", hop)

    def passed_on(self, ex: Exchange, value: bytes) -> None:
        """A peer's inbound made this error response, and it goes to our client as it is (not retried)."""
        reason, _, rest = value.partition(b";")
        hop = rest.strip()
        if hop.startswith(b"hop="):
            hop = hop[4:]
        made = (reason.strip().decode("latin-1")[:64], hop.decode("latin-1")[:128] or "peer")
        ex.passed_error = made  # for the access log
        self.count_error(ex, made[0], made[1])

    # --- the end of an exchange: the one place that tells the observers --------------
    def exchange_done(self, ex: Exchange, status: int, reason: str, ok: bool, now: float = 0.0) -> None:
        """The answer to ex is decided (complete, or a mesh error, or cut short): count it once, everywhere.

        Link stats, the endpoint's load/latency/failures (outlier detection), the destination's
        limits, the access log, then any further observers (Runtime.observers). ok: False when
        the endpoint failed (a 5xx, a reset, a timeout), for outlier detection.
        """
        if not now:
            now = _mono()
        ex.state = FAILED if reason else DONE
        self.last_active = now
        t = ex.timer
        if t is not None:
            ex.timer = None
            t.cancel()
        dur = now - ex.t0
        r = ex.routed
        link = r.link if r is not None else (
            self.side.link_for(ex.service) if ex.service and ex.service in self.rt.table.remotes
            or self.side.name == "inbound" else None)
        if link is not None:
            link.observe(status, dur)
        ep = ex.ep
        if ep is not None:
            ex.ep = None
            ep.end(ok, now - (ex.sent_at or ex.t0), now)
        chain = ex.chain
        if chain is not None:
            ex.chain = None
            chain.limits.done()
        # What is told of a finished exchange never breaks it, nor the connection: a defect (or a
        # full disk under the access log) is logged, and the answer stands.
        if self.logging:
            try:
                self.rt.access_log(ex, status, reason, ep)
            except Exception as e:
                defect("the access log", e)
        ring = self.ring
        if ring is not None:
            try:
                ring.observe(ex, status, reason)
            except Exception as e:
                defect("the trace ring", e)
        observers = self.observers
        if observers:
            for f in observers:
                try:
                    f(ex, status, reason)
                except Exception as e:
                    defect("an observer of finished exchanges", e)

    def exchange_abandoned(self, ex: Exchange) -> None:
        """The client left before its answer: what ex holds (endpoint load, a limit's slot, a timer) is let go."""
        ex.state = ABANDONED
        t = ex.timer
        if t is not None:
            ex.timer = None
            t.cancel()
        ep = ex.ep
        if ep is not None:
            ex.ep = None
            if ep.outstanding > 0:
                ep.outstanding -= 1
        chain = ex.chain
        if chain is not None:
            ex.chain = None
            chain.limits.done()

    def finish(self, ex: Exchange, close: bool) -> None:
        """The response to ex is complete; start the next queued request if any."""
        q = self.queue
        if q and q[0] is ex:
            del q[0]
        if close or not ex.keep_alive:
            self.closing = True
            q.clear()
            self.flush()
            return
        if not ex.req_done and ex.framing != Framing.NONE:
            # The response ended before the request body: the connection cannot be reused.
            self.closing = True
            self.flush()
            return
        self.resume(2)
        if q:
            nxt = q[0]
            if nxt.head_done:
                self._dispatch(nxt)
        if len(q) <= 1:
            self.resume(1)

    # --- what an UpstreamConn asks of the client it answers (Client, above) ------------
    def clock(self) -> float:
        return self.now

    def recording(self) -> list[int]:
        return self.recording_limit

    def fail(self, ex: Exchange, reason: str, msg: str) -> None:
        """The next hop failed ex before its answer began: a mesh error goes to the client now."""
        self._mesh_error(ex, reason, msg)
        self.flush()

    def cut_short(self, ex: Exchange, status: int, reason: str) -> None:
        """ex's answer began and cannot end as it should (a reset, a bad response, a timeout): the
        observers learn why, and the client's connection ends, so that a cut answer never passes for whole."""
        self.exchange_done(ex, status, reason, False)
        self.closing = True
        self.queue.clear()
        self.flush()
        self.transport.close()

    def retry(self, ex: Exchange, cause: int, status: int, reason: bytes) -> Routed | None:
        """Where a failed try of ex goes again, by this connection's side (Side.retry), or None."""
        return self.side.retry(ex, cause, status, reason)

    def send_again(self, ex: Exchange, r: Routed, pooled: bool) -> None:
        """Another try of ex, to r: on an idle pooled connection when pooled allows one, else a new one."""
        if pooled:
            conn = take(r.pool)
            if conn is not None:
                conn.start(ex)
                conn.flush()
                return
        self.rt.spawn(self._connect_and_start(ex, r))

    def upstream_fields(self, ex: Exchange) -> list[bytes]:
        """The request's fields for the next hop (flat): hop-by-hop headers out, mesh headers in.

        Fields, not text: the upstream connection writes them as HTTP/1 or as a binary head
        (protocols/mux_head.py), whichever its next hop reads.
        """
        h = ex.head
        routed = ex.routed
        assert h is not None and routed is not None
        if h.conn is not None:
            h.drop_connection_listed()
        f = h.forward[:]  # the head's own list stays as the client sent it (the tap, the trace ring)
        rid = h.rid
        tp = h.tp
        if rid is None and tp is None and not self.spans:  # the usual request from an app
            rid, tp = new_request_id_and_traceparent()
            f.append(b"x-request-id")
            f.append(rid)
            f.append(b"traceparent")
            f.append(tp)
        else:
            if rid is None:
                rid = new_request_id()
                f += (b"x-request-id", rid)
            if self.spans:
                tp = self._own_span(ex, tp, f)
            elif tp is None:
                tp = new_traceparent()
                f += (b"traceparent", tp)
        ex.traceparent = tp
        ex.request_id = rid
        extra = routed.extra
        if extra:
            f += extra
        if ex.upgrade:
            f += (b"connection", b"upgrade", b"upgrade", h.upgrade or b"")
        framing = ex.framing
        if framing == Framing.LENGTH:
            assert h.cl is not None  # LENGTH framing comes from a Content-Length
            f.append(b"content-length")
            f.append(h.cl)
        elif framing == Framing.CHUNKED:
            f += (b"transfer-encoding", b"chunked")
            ex.up_chunked = True
        return f

    def _own_span(self, ex: Exchange, tp: bytes | None, f: list[bytes]) -> bytes:
        """This hop's span (spans exported): the traceparent sent on names it as the parent; tracestate is kept."""
        if tp is None:
            tp = new_traceparent()
            f += (b"traceparent", tp)
            ex.span_id = tp[36:52]
            return tp
        span = ex.span_id = new_span_id()
        mine = tp[:36] + span + tp[52:]
        for i in range(0, len(f) - 1, 2):
            name = f[i].lower()
            if name == b"traceparent" and f[i + 1] == tp:
                f[i + 1] = mine
            elif name == b"tracestate" and ex.tracestate is None:
                ex.tracestate = f[i + 1][:512].strip()
        return mine

    def build_response_head(self, ex: Exchange, status: int, rh: ResponseHead, framing: int, length: int,
                            now: float) -> bytes:
        """The response head for the client, with this hop added to the trail.

        As HTTP/1, or as a binary head (protocols/mux_head.py) to a peer proxy that reads them,
        when the response has no body or a Content-Length one and the stream stays open.
        """
        side = self.side
        if rh.conn is not None:
            rh.drop_connection_listed()
        routed = ex.routed
        assert routed is not None
        # Only a peer proxy's trail and error reason are ours to pass on: an app (behind an inbound
        # side, or found by DNS) may say anything, and a forged reason would make callers retry.
        from_peer = side.trust_trail and routed.pool.ssl_ctx is not None
        if rh.error is not None:
            if not from_peer:
                rh.drop_error()
            else:
                self.passed_on(ex, rh.error)
        f: list[bytes] = []  # this hop's fields, after rh.forward (which stays as the next hop sent it: the tap reads it)
        if not rh.has_rid and ex.request_id:
            f.append(b"x-request-id")
            f.append(ex.request_id)
        mine = self.trail_prefix + duration_ms(now - ex.t0)
        if ex.route is not None and (ex.subset or ex.route.name != b"default"):
            mine += self.trail_route(ex)
        if ex.attempts > 1:
            f += (b"glassmesh-attempts", b"%d" % ex.attempts)
        prev = rh.trail if from_peer else None
        f.append(b"glassmesh-trail")
        f.append(mine + b", " + prev if prev else mine)
        binary = self.binary_out
        if framing == Framing.LENGTH:
            f.append(b"content-length")
            f.append(_DIGITS[length] if length < 1024 else b"%d" % length)
        elif framing != Framing.NONE:
            binary = False
            if ex.http10:
                ex.keep_alive = False
            else:
                f += (b"transfer-encoding", b"chunked")
                ex.resp_chunked = True
        elif rh.cl is not None and (ex.method == b"HEAD" or status == 304):
            f += (b"content-length", rh.cl)
        elif status not in (204, 304) and ex.method != b"HEAD":
            f += (b"content-length", b"0")
        if not ex.keep_alive or self.closing:
            binary = False
            f += (b"connection", b"close")
        elif ex.http10:
            f += (b"connection", b"keep-alive")
        if binary and status >= 200:
            if self.wbuf:  # a binary head begins a write of the stream (mux_head.py): what is before it goes first
                self.flush_writes()
            return encode_response(status, rh.forward, f)
        return _head(status_line(status), rh.forward, f)

    def trail_route(self, ex: Exchange) -> bytes:
        """The route and subset that served ex, for its trail entry (nothing for the default route)."""
        route = ex.route
        if route is None:
            return b""
        out = b";route=" + route.name if route.name != b"default" or ex.subset else b""
        return out + b";subset=" + ex.subset if ex.subset else out

    def detach(self) -> Any:
        """This connection is handed to a byte relay (after a 101): stop counting it as ours; its transport, for the relay."""
        self.queue.clear()
        self.rt.conns.discard(self)
        self.rt.stats.client_conns -= 1
        self.side.budget.count -= 1
        if self.link is not None:
            self.link.open_conns -= 1
        self.link = None
        return self.transport

    def _start_tunnel_request(self, rest: bytes) -> None:
        """The request asked to upgrade; its bytes after the head wait for the 101."""
        ex = self.queue[-1] if self.queue else None
        if ex is not None and rest:
            ex.pending.append(rest)
        self.pause(1)


class UpstreamConn(PooledConn):
    """A connection to the next hop (a peer's inbound port, or a local app)."""

    def __init__(self, rt: Runtime, pool: Pool) -> None:
        self.rt = rt
        self.pool = pool
        self.transport: Any = None
        self.t_write: Callable[[bytes], None] = _no_write
        self.t_closing: Callable[[], bool] = _closed
        self.reader = ResponseReader(rt.limits.max_head_bytes, _UpstreamEvents(self))
        self.now = 0.0  # when the current read arrived
        self.sending: Exchange | None = None
        self.ex: Exchange | None = None
        self.client: Client | None = None
        self.wbuf: list[bytes] = []
        self.status = 0
        self.lost = False
        self.retry_to: Routed | None = None
        self.read_paused = False
        self.used = 0
        self.idle_since = 0.0
        self.resp_framing = Framing.NONE
        self.tunnel = False
        self.got_bytes = False
        self.link: LinkStats | None = pool.link if pool.count_conns else None
        self.limits: Limits | None = None  # the destination's limits that count this connection (overload)
        self.rec: Recording | None = None  # the bytes of the try under way, while a tap wants them
        # Whether the next hop reads binary heads (protocols/mux_head.py): 1 yes, -1 no, 0 not known yet
        # (a mux stream opened before the peer's SETTINGS came).
        self.binary = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.t_write = transport.write
        self.t_closing = transport.is_closing
        if isinstance(transport, Stream):
            self.reader.read_binary()  # this build's SETTINGS said minor 3: the peer may answer in binary heads
        else:
            self.binary = -1
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.link is not None:
            self.link.open_conns += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        try:
            self._lost()
        finally:
            self.reader.release()  # no reference cycle left (see ResponseReader.release); rh stays readable

    def _lost(self) -> None:
        if self.link is not None:
            self.link.open_conns -= 1
        self.release_limits()
        self.pool.discard(self)
        ex = self.ex
        if ex is None or ex.cancelled:
            return
        self.ex = None
        self.sending = None
        client = self.client
        assert client is not None  # set with self.ex
        if ex.resp_started:
            if self.resp_framing == Framing.CLOSE:
                self._complete(ex, reusable=False)
            else:
                client.cut_short(ex, self.status, "upstream_reset")
            return
        if not self.got_bytes and self._replay(ex, client, REFUSED if unserved(ex, self.transport) else RESET):
            return
        client.fail(ex, "upstream_reset", f"{self.pool.key.host}:{self.pool.key.port} closed the "
                    "connection before answering")

    def _replay(self, ex: Exchange, client: Client, cause: int) -> bool:
        """Send a request whose connection closed before any byte of the answer once more.

        Typically a kept-alive connection that the app closed as the request went out (an app
        restarting or stopping, an idle timeout), or a connection that an app on its way out
        accepted and never served. Another place when the side has one (outbound: another
        endpoint; inbound: another local instance), else the same one on a fresh connection: an
        app that is gone refuses it, and a caller's outbound proxy then sends it elsewhere.
        """
        nxt = client.retry(ex, cause, 0, b"upstream_reset")
        if nxt is None:
            return False
        ex.upstream = None
        ex.routed = nxt
        ex.state = ROUTED
        client.send_again(ex, nxt, False)
        return True

    def pause_read(self) -> None:
        # Tracked here: an unconditional resume_reading() on a TLS transport
        # schedules a read attempt, which cost about a third of a request's CPU.
        if not self.read_paused and not self.lost:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_read(self) -> None:
        if self.read_paused and not self.lost:
            self.read_paused = False
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return not self.lost and not self.t_closing()

    def rides_on(self, mux: MuxConnection) -> bool:
        return getattr(self.transport, "conn", None) is mux

    def close(self) -> None:
        if not self.lost:
            self.transport.close()

    def abort(self) -> None:
        self.ex = None
        self.sending = None
        if not self.lost:
            self.transport.abort()

    def pause_writing(self) -> None:
        c = self.client
        if c is not None:
            c.pause(2)

    def resume_writing(self) -> None:
        c = self.client
        if c is not None:
            c.resume(2)

    def flush(self) -> None:
        wb = self.wbuf
        if wb:
            data = b"".join(wb) if len(wb) > 1 else wb[0]
            rec = self.rec
            if rec is not None:
                rec.add(True, data)
            self.t_write(data)
            self.wbuf = []

    # --- request side -------------------------------------------------------
    def start(self, ex: Exchange) -> None:
        self.used += 1
        self.got_bytes = False
        if self.read_paused:
            self.resume_read()  # paused for a previous, slow client
        self.ex = ex
        self.sending = ex
        ex.upstream = self
        ex.state = SENT
        self.client = client = ex.conn
        recording = client.recording()
        if recording:
            self.rec = ex.rec = Recording(recording[0])
        elif self.rec is not None:
            self.rec = None
        self.reader.expect(ex.method == b"HEAD", ex.upgrade)
        fields = ex.up_fields
        if fields is None:
            fields = ex.up_fields = client.upstream_fields(ex)
            m = ex.mirror
            if m is not None:
                ex.mirror = None
                self.rt.spawn(send_copy(m.pool, request_head(ex, fields)))
        binary = self.binary
        if binary == 0:
            binary = self._peer_reads_binary()
        if binary > 0 and not ex.up_chunked and not ex.upgrade and self.rec is None:
            self.wbuf.append(encode_request(ex.method, ex.url, fields))
        else:
            self.wbuf.append(request_head(ex, fields))
        ex.sent_at = client.clock()
        for b in ex.pending:
            self.send_body(b)
        ex.pending = []
        ex.pending_bytes = 0
        client.resume(2)
        if ex.req_done:
            self.end_body()

    def _peer_reads_binary(self) -> int:
        """1 when this stream's peer reads binary heads (its SETTINGS say minor 3 or later), -1 not, 0 not yet known."""
        conn = self.transport.conn
        if not conn.settings_seen:
            return 0
        self.binary = 1 if conn.peer_version & 0xFFFF >= MINOR_BINARY_HEAD else -1
        return self.binary

    def send_body(self, body: bytes) -> None:
        ex = self.ex
        assert ex is not None and ex.routed is not None
        n = len(body)
        ex.routed.link.bytes_req += n
        ex.req_bytes += n
        ex.body_sent = True
        if self.tunnel:
            self.wbuf.append(body)
        elif ex.up_chunked:
            self.wbuf.append(chunk(body))
        else:
            self.wbuf.append(body)

    def end_body(self) -> None:
        ex = self.ex
        if ex is not None and ex.up_chunked:
            t = ex.trailers
            self.wbuf.append(LAST_CHUNK if t is None else last_chunk(t))
        self.sending = None

    # --- response side ------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        c = self.client
        if self.ex is None:
            # Bytes on an idle connection: the peer is not speaking HTTP as agreed.
            self.transport.abort()
            return
        self.now = _mono()
        rec = self.rec
        if rec is not None:  # before the reader, which may end the exchange and tell its observers
            rec.add(False, self.reader.as_http1(data))  # a binary head recorded as the HTTP/1 it stands for
        self.reader.feed(data)  # its events call _response_head, _response_data, ... (see _UpstreamEvents)
        if self.tunnel:
            return
        if c is not None:
            c.flush()
        if not self.lost:
            self.flush()

    def _response_upgrade(self, rest: bytes) -> None:
        if rest and self.tunnel:
            self.transport.get_protocol().data_received(rest)

    def _protocol_error(self, msg: str, reason: str = "upstream_protocol_error") -> None:
        ex = self.ex
        self.ex = None
        self.transport.abort()
        if ex is None or ex.cancelled:
            return
        c = self.client
        assert c is not None
        if ex.resp_started:
            c.cut_short(ex, self.status, reason)
        elif reason == "upstream_protocol_error":
            c.fail(ex, reason, f"invalid response from the next hop: {msg}")
        else:
            c.fail(ex, reason, f"while reading the next hop's response: {msg}")

    # --- the codec's events (protocols/http1_codec.py) ----------------------------
    def _interim(self, r: Response) -> None:
        """A 1xx: 100, 102 and 103 go on to a client that can read them."""
        ex = self.ex
        assert ex is not None and self.client is not None
        if r.status in _FORWARD_1XX and not ex.http10:
            self.client.write(_head(status_line(r.status), r.fields))

    def _response_head(self, rh: ResponseHead) -> None:
        r = self.reader
        status = r.status
        ex = self.ex
        c = self.client
        assert ex is not None and c is not None
        if status == 101:  # the codec says so only when the request asked to upgrade
            self._switch(ex, status)
            return
        if (status >= 500 or status == 421) and self._retry_elsewhere(ex, rh, status):
            return  # its body is dropped; the request goes again when it has arrived (_response_end)
        self.resp_framing = r.framing
        ex.head_at = self.now
        ex.resp_started = True
        ex.state = HEAD_BACK
        c.write(c.build_response_head(ex, status, rh, r.framing, r.length, self.now))
        self.status = status

    def _response_data(self, body: bytes) -> None:
        ex = self.ex
        if self.retry_to is not None:
            return  # the peer's error, being replaced by another endpoint's answer
        c = self.client
        assert ex is not None and ex.routed is not None and c is not None
        n = len(body)
        ex.routed.link.bytes_resp += n
        ex.resp_bytes += n
        if ex.resp_chunked:
            c.write(chunk(body))
        else:
            c.write(body)

    def _response_end(self, trailers: list[bytes] | None) -> None:
        ex = self.ex
        if ex is None or self.tunnel:
            return
        if self.retry_to is not None:
            self._resend(ex, self.reader.keep_alive)
            return
        self._complete(ex, self.reader.keep_alive, trailers)

    def _retry_elsewhere(self, ex: Exchange, rh: ResponseHead, status: int) -> bool:
        """A 5xx (or 421): the side decides whether another try may get a better answer.

        A peer proxy's own error (its glassmesh-error, read only from a peer) says whether the
        request reached an app; any other 5xx is the app's, retried only where its route says so.
        Its body is dropped while it arrives, and the request goes again when it has.
        """
        if self.tunnel or ex.cancelled:
            return False
        reason = peer_error(rh) if self.pool.ssl_ctx is not None else None
        if reason is not None:
            nxt = ex.conn.retry(ex, PEER_ERROR, status, reason)
        elif ex.route is not None and ex.route.retry is not None:
            nxt = ex.conn.retry(ex, STATUS, status, b"")
        else:
            return False
        if nxt is None:
            return False
        self.retry_to = nxt
        return True

    def _resend(self, ex: Exchange, reusable: bool) -> None:
        nxt = self.retry_to
        self.retry_to = None
        c = self.client
        assert nxt is not None and c is not None
        self.ex = None
        ex.upstream = None
        if reusable and not self.lost:
            self.client = None
            self.pool.put(self)
        else:
            self.close()
        ex.routed = nxt
        ex.state = ROUTED
        c.send_again(ex, nxt, True)

    def _complete(self, ex: Exchange, reusable: bool, trailers: list[bytes] | None = None) -> None:
        """The response to ex is complete: its end (and trailer fields, when it goes out chunked) to the client."""
        c = self.client
        assert c is not None and ex.routed is not None
        if ex.resp_chunked:
            c.write(LAST_CHUNK if trailers is None else last_chunk(trailers))
        # The response leaves now; the counting and pooling below are not on its way.
        c.flush()
        c.exchange_done(ex, self.status, "", self.status < 500, self.now)
        self.ex = None
        ex.upstream = None
        pool = self.pool
        if reusable and ex.req_done and self.sending is None and not self.lost and pool.reuses(self.used):
            self.client = None
            pool.put(self)
        else:
            self.sending = None
            self.close()
        c.finish(ex, False)

    def _switch(self, ex: Exchange, status: int) -> None:
        """101 Switching Protocols: from here on both connections are one byte pipe.

        The proxy-to-proxy leg carries it in the tcp-link frames, so that a
        half-close crosses the mesh as it would cross a plain TCP connection.
        """
        c = self.client
        rh = self.reader.rh
        assert c is not None and rh is not None and ex.routed is not None
        ex.resp_started = True
        rh.drop_connection_listed()
        hdrs = rh.forward + [b"connection", b"upgrade", b"upgrade", rh.upgrade or b"websocket"]
        c.write(_head(status_line(101), hdrs))
        c.flush()
        self.tunnel = True
        self.status = 101
        c.exchange_done(ex, 101, "", True)
        ex.state = TUNNEL
        ct = c.detach()
        self.detach()
        relay = Relay(None)
        upstream_is_mesh = self.pool.ssl_ctx is not None
        plain = PlainSide(relay, outbound=upstream_is_mesh)
        framed = FramedSide(relay, outbound=upstream_is_mesh)
        plain.transport, framed.transport = (ct, self.transport) if upstream_is_mesh else (self.transport, ct)
        relay.plain, relay.framed = plain, framed
        plain.transport.set_protocol(plain)
        framed.transport.set_protocol(framed)
        # Bytes the client sent after its upgrade request, held until now.
        client_side = plain if upstream_is_mesh else framed
        for b in ex.pending:
            client_side.data_received(b)
        ex.pending = []
        ct.resume_reading()
        self.transport.resume_reading()

    def release_limits(self) -> None:
        lim = self.limits
        if lim is not None:
            self.limits = None
            lim.closed()

    def detach(self) -> None:
        """This connection is handed to a byte relay: stop counting it as ours."""
        self.release_limits()
        self.lost = True
        self.ex = None
        if self.link is not None:
            self.link.open_conns -= 1
        self.pool.discard(self)


class _ClientEvents(Events):
    """A client connection's request events, to its ServerConn (native calls)."""

    def __init__(self, conn: ServerConn) -> None:
        self.conn = conn

    def request_head(self, h: RequestHead) -> None:
        self.conn._request_head(h)

    def data(self, data: bytes) -> None:
        self.conn._request_data(data)

    def end(self, trailers: list[bytes] | None) -> None:
        self.conn._request_end(trailers)

    def upgrade(self, rest: bytes) -> None:
        self.conn._start_tunnel_request(rest)

    def preface(self, rest: bytes) -> None:
        self.conn._preface(rest)

    def error(self, e: BadMessage) -> None:
        if e.__cause__ is not None:  # the proxy's own defect (http1_codec.own_failure)
            defect(f"reading a request on {self.conn.side.name}", e.__cause__)
        self.conn._parse_error(e)


class _UpstreamEvents(Events):
    """An upstream connection's response events, to its UpstreamConn; none once it answered (a peer's extra bytes)."""

    def __init__(self, conn: UpstreamConn) -> None:
        self.conn = conn

    def response_head(self, rh: ResponseHead) -> None:
        c = self.conn
        if c.ex is not None:
            c._response_head(rh)

    def interim(self, r: Response) -> None:
        c = self.conn
        if c.ex is not None:
            c._interim(r)

    def data(self, data: bytes) -> None:
        c = self.conn
        if c.ex is not None:
            c._response_data(data)

    def end(self, trailers: list[bytes] | None) -> None:
        self.conn._response_end(trailers)

    def upgrade(self, rest: bytes) -> None:
        self.conn._response_upgrade(rest)

    def error(self, e: BadMessage) -> None:
        if e.__cause__ is not None:  # the proxy's own defect (http1_codec.own_failure), not the peer's
            defect("reading a response", e.__cause__)
        self.conn._protocol_error(str(e), e.reason)


def take(pool: Pool) -> UpstreamConn | None:
    """An idle connection of an HTTP pool (they hold nothing else), or None."""
    c = pool.take()
    return cast(UpstreamConn, c) if c is not None else None


def bodiless(ex: Exchange) -> bool:
    """Whether ex can be sent again whole: no body (a body is never kept once sent), not an upgrade."""
    return ex.framing == Framing.NONE and ex.req_done and not ex.upgrade


def replayable(ex: Exchange) -> bool:
    """Whether ex may be sent again after it may have reached an app (its connection reset before any answer).

    Idempotent, not an upgrade, not replayed already, and either without a body or with none
    of its body sent yet (nothing of a body is kept once sent; one still to come, as after
    `Expect: 100-continue`, follows the new head).
    """
    if ex.replays >= MAX_REPLAYS or ex.upgrade or ex.method not in IDEMPOTENT:
        return False
    return ex.req_done if ex.framing == Framing.NONE else not ex.body_sent


def unserved(ex: Exchange, transport: Any) -> bool:
    """Whether ex's stream was refused by a draining peer (reset after its GOAWAY): no app saw it, any method may go again.

    Only while all of it can still be sent (no body, or none of it sent yet),
    and a bounded number of times.
    """
    if getattr(transport, "reset_reason", "") != REFUSED_GOAWAY or ex.upgrade or ex.replays >= MAX_TRIES:
        return False
    return ex.req_done if ex.framing == Framing.NONE else not ex.body_sent


def peer_error(rh: ResponseHead) -> bytes | None:
    """The reason code of an error a peer's inbound side made (its glassmesh-error header), or None.

    Read only from 502, 503, 504 and 421 responses of peer proxies, never on a success.
    """
    value = rh.error
    if value is None:
        return None
    reason, _, hop = value.partition(b";")
    return reason.strip() if hop.endswith(b"/inbound") else None


def _no_write(data: bytes) -> None:
    raise RuntimeError("write before connection_made")


def _closed() -> bool:
    return True


# Durations in the trail are written from tables: %-formatting them cost about
# 2,000 instructions per response (callgrind), a float's a dtoa besides.
_MS: Final = [b"%d" % i for i in range(1000)]
_FRAC: Final = [b".%03d" % i for i in range(1000)]


def duration_ms(seconds: float) -> bytes:
    """seconds as milliseconds with three decimals (b"1.234"); never negative."""
    us = int(seconds * 1e6)
    if us < 0:
        us = 0
    ms = us // 1000
    return (_MS[ms] if ms < 1000 else str(ms).encode()) + _FRAC[us % 1000]


_DIGITS: Final = [b"%d" % i for i in range(1024)]


def _head(first: bytes, fields: list[bytes], more: list[bytes] | None = None) -> bytes:
    """An HTTP/1 head: the first line, then the fields (flat), then `more` fields, joined once.

    A line per field, then one join: a join costs about 100 instructions per part
    (a buffer view of each), so four parts per field (name, ": ", value, CRLF) cost more
    than the one concatenation per field that makes a line of them (callgrind).
    """
    lines = [first]
    for i in range(0, len(fields) - 1, 2):
        lines.append(fields[i] + b": " + fields[i + 1])
    if more is not None:
        for i in range(0, len(more) - 1, 2):
            lines.append(more[i] + b": " + more[i + 1])
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def request_head(ex: Exchange, fields: list[bytes]) -> bytes:
    """The HTTP/1 request head for the next hop, of fields from Client.upstream_fields."""
    return _head(ex.method + b" " + ex.url + b" HTTP/1.1", fields)


__all__ = [
    "ABANDONED",
    "Client",
    "DONE",
    "FAILED",
    "HEAD_BACK",
    "QUEUED",
    "ROUTED",
    "SENT",
    "STATE_NAMES",
    "TUNNEL",
    "Exchange",
    "Routed",
    "ServerConn",
    "Side",
    "UpstreamConn",
]
