"""The HTTP/1.1 codec's reading half, sans-IO: bytes in, message events out (h11's shape, on llhttp).

No socket, no transport, no clock: a reader is fed the bytes a connection
read and tells the events they complete. The proxy's connections
(proxy/http.py) do the I/O and act on the events; tests drive a reader with
bytes alone (tests/unit/test_http1_codec.py). The writing half is
protocols/http1.py's status_line, chunk and last_chunk, with the heads built
in proxy/http.py (build_upstream_head, build_response_head).

A reader tells its events to an Events object, one method call per event,
as they complete (inside llhttp's callbacks, or after it stopped): a native
call each. Queuing them as objects, or as slots of a list read back after
each read, cost about 1,000 instructions per proxied request (callgrind).
Recorder turns the calls into a list again, for tests and for anyone who
wants h11's next_event() shape. The events, with what each carries (the
neutral model is protocols/message.py):

    HEAD        request_head(RequestHead), or response_head(ResponseHead) of a final response
    INTERIM     interim(message.Response): a 1xx (status, fields less connection ones); never a 101
                that switches (that one is a HEAD)
    DATA        data(bytes): a piece of the body
    END         end(trailers): the message is complete, with its trailer fields (filtered) or None
    UPGRADE     upgrade(bytes): what came after a head that switched protocols (an upgrade request, a 101)
    PREFACE     preface(bytes): (requests) the HTTP/2 connection preface instead of a request, and
                what came after it
    ERROR       error(BadMessage): the bytes cannot be read on (status and reason code); the reader is dead

llhttp's own checks (chunk sizes, obs-fold, header characters, Content-Length
with Transfer-Encoding, framing fields in a trailer section) come out as ERROR
400; the head rules on top of it are protocols/http1.py's.

On a mux stream (read_binary(), said by the connection) a reader also takes
binary heads (protocols/mux_head.py) where a message begins, and the body
after one by its Content-Length: the same events, without llhttp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import httptools

from glassmesh.protocols.http1 import BadMessage, Framing, RequestHead, ResponseHead
from glassmesh.protocols.message import Response, trailer_fields
from glassmesh.protocols.mux_head import (
    Known,
    check_request_line,
    head_end,
    parse_status,
    response_as_http1,
    split_head,
)

HEAD: Final = 1
INTERIM: Final = 2
DATA: Final = 3
END: Final = 4
UPGRADE: Final = 5
PREFACE: Final = 6
ERROR: Final = 7

NAMES: Final = {HEAD: "HEAD", INTERIM: "INTERIM", DATA: "DATA", END: "END", UPGRADE: "UPGRADE",
                PREFACE: "PREFACE", ERROR: "ERROR"}

PRI_LINE: Final = b"PRI * HTTP/2.0\r\n\r\n"  # what llhttp reads of the HTTP/2 preface before it stops


class Events:
    """What a reader tells, one call per event (see the module docstring); subclassed by each user."""

    def request_head(self, h: RequestHead) -> None:
        pass

    def response_head(self, rh: ResponseHead) -> None:
        pass

    def interim(self, r: Response) -> None:
        pass

    def data(self, data: bytes) -> None:
        pass

    def end(self, trailers: list[bytes] | None) -> None:
        pass

    def upgrade(self, rest: bytes) -> None:
        pass

    def preface(self, rest: bytes) -> None:
        pass

    def error(self, e: BadMessage) -> None:
        pass


class Recorder(Events):
    """The events as a flat list (kind, payload, ...), h11's shape: tests read it, then take() empties it."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def take(self) -> list[Any]:
        out = self.events
        self.events = []
        return out

    def _add(self, kind: int, arg: Any) -> None:
        self.events.append(kind)
        self.events.append(arg)

    def request_head(self, h: RequestHead) -> None:
        self._add(HEAD, h)

    def response_head(self, rh: ResponseHead) -> None:
        self._add(HEAD, rh)

    def interim(self, r: Response) -> None:
        self._add(INTERIM, r)

    def data(self, data: bytes) -> None:
        self._add(DATA, data)

    def end(self, trailers: list[bytes] | None) -> None:
        self._add(END, trailers)

    def upgrade(self, rest: bytes) -> None:
        self._add(UPGRADE, rest)

    def preface(self, rest: bytes) -> None:
        self._add(PREFACE, rest)

    def error(self, e: BadMessage) -> None:
        self._add(ERROR, e)


def own_failure(e: BaseException) -> BadMessage:
    """An exception of the proxy's own code inside a callback (a defect): not the peer's fault.

    llhttp wraps whatever a callback raises; without this a proxy bug read as a malformed
    request (400, blaming the client) or an invalid response (502, blaming the next hop).
    The original exception is the result's __cause__, for the connection to log; the peer is
    told only that this proxy failed (an exception's text may hold another request's data).
    """
    m = BadMessage("this proxy failed on the message; its log has the traceback", "internal_error", 500)
    m.__cause__ = e
    return m


_NO_EVENTS: Final = Events()  # a released reader's sink: tells no one


def _fed_nothing(data: bytes) -> None:
    pass


def _no_method() -> bytes:
    return b""


def _no_version() -> str:
    return ""


def _no_status() -> int:
    return 0


def _no() -> bool:
    return False


class _Reader:
    """What both readers share: whom they tell, and the bytes fed since the last event."""

    def __init__(self, max_head: int, sink: Events) -> None:
        self.max_head = max_head
        self.sink = sink
        self.fed = 0  # bytes fed since the last event: while a head arrives, its size so far
        # Binary heads (protocols/mux_head.py): read only when the connection says so (a mux stream),
        # only where a message begins: llhttp is between messages (mid: inside one).
        self.binary = False
        self.mid = False
        self.known: Known | None = None
        self.partial = b""  # the start of a binary head, until its LF arrives
        self.body_left = 0  # body bytes of a binary-headed message still to come

    def read_binary(self) -> None:
        """Read binary heads too: the connection is a mux stream between proxies (never an app's)."""
        self.binary = True
        self.known = Known()

    def _binary_end(self) -> None:
        raise NotImplementedError

    def _body_then(self, data: bytes) -> bytes:
        """Body bytes of a binary-headed message as DATA (and its END once whole); what follows the body."""
        left = self.body_left
        n = len(data)
        if n <= left:
            self.body_left = left - n
            self.sink.data(data)
            if n == left:
                self._binary_end()
            return b""
        self.body_left = 0
        self.sink.data(data[:left])
        self._binary_end()
        return data[left:]

    def _drop_parser(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """The connection is gone: let go of the parser and the sink, keep what was read.

        A parser holds its reader (llhttp's callbacks), the reader holds the parser's
        bound methods, and the sink holds the connection that holds the reader: left
        as they are, every closed connection is a reference cycle that only Python's
        cyclic collector frees, about 26,000 instructions per new connection (callgrind,
        Connection: close). Broken here, reference counting frees it at once. What a
        reader read (heads, the last status) stays readable: the trace ring and tap
        read it after the connection closed. Feeding a released reader does nothing.
        """
        self.sink = _NO_EVENTS
        self._drop_parser()


class RequestReader(_Reader):
    """A client connection's bytes in, request events out.

    Limits: a head (request line, fields, and a trailer section) of at most
    max_head bytes and max_headers fields. llhttp reports a field only when its
    line ends, and httptools grows one value in memory until then, so the bytes
    fed since the last event are counted too: a value that never ends is cut
    at the limit plus at most one read.
    """

    def __init__(self, max_head: int, max_headers: int, sink: Events) -> None:
        super().__init__(max_head, sink)
        self.max_headers = max_headers
        p = httptools.HttpRequestParser(self)
        # Bound once: a method lookup per call is a dict walk on a type mypyc does not know.
        self.p_feed: Callable[[bytes], None] = p.feed_data
        self.p_method: Callable[[], bytes] = p.get_method
        self.p_version: Callable[[], str] = p.get_http_version
        self.p_keep_alive: Callable[[], bool] = p.should_keep_alive
        self.p_upgrade: Callable[[], bool] = p.should_upgrade
        self.in_head = False  # a head has begun and is not complete (the request timeout's business)
        self.head_size = 0
        self.url = b""
        self.raw: list[bytes] = []
        self.trailers: list[bytes] | None = None
        self.head_done = False
        self.dead = False
        # Of the last head llhttp read (also a refused one): for the answer to a bad request.
        self.method = b""
        self.http10 = False

    def _drop_parser(self) -> None:
        self.dead = True
        self.p_feed = _fed_nothing
        self.p_method = _no_method
        self.p_version = _no_version
        self.p_keep_alive = _no
        self.p_upgrade = _no

    def feed(self, data: bytes) -> None:
        """Tell the events these bytes complete."""
        if self.dead:
            return
        if self.binary and (self.body_left or self.partial or (not self.mid and len(data) and data[0] == 0)):
            self._feed_binary(data)
            return
        self.fed += len(data)
        try:
            self.p_feed(data)
        except httptools.HttpParserUpgrade as e:
            self.dead = True
            self.sink.upgrade(data[e.args[0]:])
        except httptools.HttpParserError as e:
            self.dead = True
            if not self.head_done and self.url == b"*" and self.p_method() == b"PRI":
                i = data.find(PRI_LINE)
                self.sink.preface(data[i + len(PRI_LINE):] if i >= 0 else data)
                return
            cause = e.__context__ if isinstance(e, httptools.HttpParserCallbackError) else None
            if isinstance(cause, BadMessage):
                self.sink.error(cause)
            elif cause is not None:
                self.sink.error(own_failure(cause))
            else:
                self.sink.error(BadMessage(f"malformed request: {e}"))
        else:
            if self.fed > self.max_head:
                self.dead = True
                self.sink.error(BadMessage("request head too large", "head_too_large", 431))

    def stop(self) -> None:
        """Read nothing more (the connection is being closed: a head that came too late, a refusal)."""
        self.dead = True
        self.in_head = False

    def _feed_binary(self, data: bytes) -> None:
        """A binary head, or the body after one (protocols/mux_head.py), and whatever follows them."""
        while data and not self.dead:
            if self.body_left:
                data = self._body_then(data)
                continue
            if data[0] != 0 and not self.partial:
                self.feed(data)  # an HTTP/1 message after a binary one: llhttp's
                return
            buf = self.partial + data if self.partial else data
            end = head_end(buf)
            if end < 0 or end > self.max_head:
                if len(buf) > self.max_head:
                    self.dead = True
                    self.partial = b""
                    self.sink.error(BadMessage("request head too large", "head_too_large", 431))
                    return
                self.partial = buf
                self.in_head = True
                return
            self.partial = b""
            self.in_head = False
            try:
                h = self._binary_head(buf, end)
            except BadMessage as e:
                self.dead = True
                self.sink.error(e)
                return
            self.sink.request_head(h)
            if h.body_framing == Framing.NONE:
                self._binary_end()
            data = buf[end + 1:]

    def _binary_head(self, buf: bytes, end: int) -> RequestHead:
        known = self.known
        assert known is not None
        parts = split_head(buf, end, known, 400)
        target = self.url = parts.pop()
        method = self.method = parts.pop()
        check_request_line(method, target, known)
        if len(parts) > 2 * self.max_headers:
            raise BadMessage("too many request headers", "head_too_large", 431)
        h = RequestHead(parts)
        framing, n = h.framing()
        if framing == Framing.CHUNKED or h.says_connection:
            raise BadMessage("binary head with Transfer-Encoding or Connection (never sent binary)")
        self.http10 = False
        self.head_done = True
        h.method = method
        h.target = target
        h.body_framing = framing
        self.body_left = n
        return h

    def _binary_end(self) -> None:
        self.fed = 0
        self.sink.end(None)

    # --- llhttp callbacks --------------------------------------------------
    def on_message_begin(self) -> None:
        self.mid = True
        self.fed = 0
        self.in_head = True
        self.head_done = False
        self.head_size = 0
        self.url = b""
        self.raw = []
        self.trailers = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > self.max_head:
            raise BadMessage("request head too large", "head_too_large", 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.max_head:
            raise BadMessage("request head too large", "head_too_large", 431)
        if self.head_done:
            t = self.trailers
            if t is None:
                t = self.trailers = []
            t.append(name)
            t.append(value)
            if len(t) > 2 * self.max_headers:
                raise BadMessage("too many request trailer fields", "head_too_large", 431)
            return
        raw = self.raw
        raw.append(name)
        raw.append(value)
        if len(raw) > 2 * self.max_headers:
            raise BadMessage("too many request headers", "head_too_large", 431)

    def on_headers_complete(self) -> None:
        self.fed = 0
        self.in_head = False
        self.head_done = True
        method = self.method = self.p_method()
        ka = self.p_keep_alive()
        try:
            h = RequestHead(self.raw)
            framing, _ = h.framing()
        except BadMessage:
            self.http10 = self.p_version() == "1.0"
            raise
        h.method = method
        h.target = self.url
        h.keep_alive = ka
        h.wants_upgrade = self.p_upgrade()
        h.body_framing = framing
        # llhttp keeps an HTTP/1.0 request alive only when a Connection (or Proxy-Connection)
        # header asks, so a kept-alive request without one is HTTP/1.1: get_http_version,
        # a str.format in httptools (about 2,200 instructions), is asked only otherwise.
        h.http10 = self.http10 = False if ka and not h.says_connection else self.p_version() == "1.0"
        self.sink.request_head(h)

    def on_body(self, body: bytes) -> None:
        self.fed = 0
        self.sink.data(body)

    def on_message_complete(self) -> None:
        self.fed = 0
        self.mid = False
        t = self.trailers
        self.sink.end(None if t is None else trailer_fields(t))


class _HeadDone(Exception):
    """Raised in llhttp's head callback to stop it reading a body the response to HEAD does not have."""


class ResponseReader(_Reader):
    """An upstream connection's bytes in, response events out.

    expect() is told of each request before its response arrives: the
    response to HEAD has no body whatever its head says (llhttp cannot be told
    so: its parser is stopped and replaced), and only a request that asked to
    upgrade may be switched by a 101.
    """

    def __init__(self, max_head: int, sink: Events) -> None:
        super().__init__(max_head, sink)
        self._new_parser()
        self.hdrs: list[bytes] = []  # flat, as ResponseHead takes them; the trailer section after a body
        # One head, parsed into again per response: a new object per response, and freeing it,
        # cost about 1,500 instructions.
        self.rh: ResponseHead | None = None
        self.head_only = False
        self.may_upgrade = False
        self.interim = False
        self.switched = False
        self.status = 0
        self.framing = Framing.NONE
        self.length = 0
        self.keep_alive = True  # of the last complete response: whether its connection may carry another
        # Whether a request awaits its final answer: bytes of a further response before the next
        # request are an error, and never read over the head the proxy is about to act on.
        self.awaiting = False

    def _new_parser(self) -> None:
        p = httptools.HttpResponseParser(self)
        self.p_feed: Callable[[bytes], None] = p.feed_data
        self.p_status: Callable[[], int] = p.get_status_code
        self.p_keep_alive: Callable[[], bool] = p.should_keep_alive

    def _drop_parser(self) -> None:
        self.p_feed = _fed_nothing
        self.p_status = _no_status
        self.p_keep_alive = _no

    def expect(self, head_only: bool, may_upgrade: bool) -> None:
        """The next response answers a HEAD request (head_only), or one that asked to upgrade."""
        self.head_only = head_only
        self.may_upgrade = may_upgrade
        self.interim = False
        self.awaiting = True

    def feed(self, data: bytes) -> None:
        """Tell the events these bytes complete."""
        if self.binary:
            if self.body_left or self.partial or (not self.mid and len(data) and data[0] == 0):
                self._feed_binary(data)
                return
            self.mid = True
        self.fed += len(data)
        try:
            self.p_feed(data)
        except httptools.HttpParserUpgrade as e:
            self.sink.upgrade(data[e.args[0]:])
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _HeadDone):
                # Nothing after the head (else the peer and we disagree on where the answer ends).
                self.keep_alive = data.endswith(b"\r\n\r\n") and self.p_keep_alive()
                self.awaiting = False
                self.mid = False
                self._new_parser()
                self.sink.end(None)
            else:
                ctx = e.__context__
                if ctx is None or isinstance(ctx, BadMessage):
                    self.sink.error(BadMessage(str(ctx or e), "upstream_protocol_error", 502))
                else:
                    self.sink.error(own_failure(ctx))
        except httptools.HttpParserError as e:
            self.sink.error(BadMessage(str(e), "upstream_protocol_error", 502))
        else:
            if self.fed > self.max_head:
                self.sink.error(BadMessage(f"response head larger than {self.max_head} bytes",
                                             "upstream_protocol_error", 502))

    def as_http1(self, data: bytes) -> bytes:
        """data as a recording shows it: a whole binary head at its start, as the HTTP/1 head it stands for."""
        if not self.binary or self.mid or self.body_left or self.partial or not data or data[0] != 0:
            return data
        end = head_end(data)
        return response_as_http1(data, end) if end >= 3 else data

    def _feed_binary(self, data: bytes) -> None:
        """A binary head, or the body after one (protocols/mux_head.py); see RequestReader._feed_binary."""
        while data:
            if self.body_left:
                data = self._body_then(data)
                continue
            if data[0] != 0 and not self.partial:
                self.feed(data)
                return
            buf = self.partial + data if self.partial else data
            end = head_end(buf)
            if end < 0 or end > self.max_head:
                self.partial = b""
                if len(buf) > self.max_head:
                    self.sink.error(BadMessage(f"response head larger than {self.max_head} bytes",
                                               "upstream_protocol_error", 502))
                    return
                self.partial = buf
                return
            self.partial = b""
            try:
                framing = self._binary_head(buf, end)
            except BadMessage as e:
                self.sink.error(e)
                return
            rh = self.rh
            assert rh is not None
            self.sink.response_head(rh)
            if framing == Framing.NONE:
                self._binary_end()
            else:
                self.body_left = self.length
            data = buf[end + 1:]

    def _binary_head(self, buf: bytes, end: int) -> int:
        if not self.awaiting:
            raise BadMessage("a response to no request", "upstream_protocol_error", 502)
        known = self.known
        assert known is not None
        parts = split_head(buf, end, known, 502)
        last = parts.pop()
        status = parse_status(last)
        if not status:
            raise BadMessage(f"binary head status {last[:10]!r} is not 200-599", "upstream_protocol_error", 502)
        if len(parts) > 800:
            raise BadMessage("too many response headers", "upstream_protocol_error", 502)
        rh = self.rh
        if rh is None:
            self.rh = rh = ResponseHead(parts)
        else:
            rh.parse(parts)
        framing, length = rh.framing(status, b"HEAD" if self.head_only else b"GET")
        if framing == Framing.CHUNKED or framing == Framing.CLOSE or rh.conn is not None:
            raise BadMessage("binary head without a Content-Length, or with Connection (never sent binary)",
                             "upstream_protocol_error", 502)
        self.status = status
        self.framing = framing
        self.length = length
        return framing

    def _binary_end(self) -> None:
        self.fed = 0
        self.keep_alive = True
        self.awaiting = False
        self.sink.end(None)

    # --- llhttp callbacks (no on_message_begin: a callback per response costs about 1,000 instructions)
    def on_header(self, name: bytes, value: bytes) -> None:
        h = self.hdrs
        h.append(name)
        h.append(value)
        if len(h) > 800:
            raise BadMessage("too many response headers", "upstream_protocol_error", 502)

    def on_headers_complete(self) -> None:
        self.fed = 0
        if not self.awaiting:
            raise BadMessage("a response to no request")
        status = self.p_status()
        if status < 200 and not (status == 101 and self.may_upgrade):
            # Its own head: the final one may follow in the same read, and is parsed into self.rh.
            ih = ResponseHead(self.hdrs)
            self.hdrs = []
            ih.drop_connection_listed()
            self.interim = True
            self.sink.interim(Response(status, ih.forward))
            return
        self.status = status
        rh = self.rh
        if rh is None:
            self.rh = rh = ResponseHead(self.hdrs)
        else:
            rh.parse(self.hdrs)  # the previous response's head is done with
        self.hdrs = []
        if status == 101:
            self.switched = True
        else:
            self.framing, self.length = rh.framing(status, b"HEAD" if self.head_only else b"GET")
        self.sink.response_head(rh)
        if self.head_only and status >= 200:
            raise _HeadDone()

    def on_body(self, body: bytes) -> None:
        self.fed = 0
        self.sink.data(body)

    def on_message_complete(self) -> None:
        self.fed = 0
        trailers: list[bytes] | None = None
        if self.hdrs:
            trailers = trailer_fields(self.hdrs)  # the trailer section of a chunked body
            self.hdrs = []
        self.mid = False
        if self.interim:
            self.interim = False
            return
        if self.switched:
            return
        self.keep_alive = self.p_keep_alive()
        self.awaiting = False
        self.sink.end(trailers)
