"""An exchange driven without sockets, playbook style: bytes in on each side, the bytes out checked.

The real ServerConn and UpstreamConn of the inbound side (proxy/http.py) with a
real runtime and snapshot; only the transports are in memory, recording what
the proxy writes and whether it closed. Each case feeds what a client and an
app send, in order, and reads what each would receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from glassmesh.demo.topology import HostSpec, LocalSpec, build_topology
from glassmesh.model.snapshot import load_snapshot
from glassmesh.protocols.http1_codec import END, HEAD, Recorder, RequestReader, ResponseReader
from glassmesh.proxy.connector import ConnectError
from glassmesh.proxy.http import (
    ABANDONED,
    DONE,
    FAILED,
    HEAD_BACK,
    QUEUED,
    ROUTED,
    SENT,
    STATE_NAMES,
    TUNNEL,
    ServerConn,
    UpstreamConn,
)
from glassmesh.proxy.routing import PoolKey
from glassmesh.proxy.runtime import Runtime
from glassmesh.proxy.sides import InboundSide, OutboundSide
from glassmesh.proxy.tcp import encode


class Wire:
    """An in-memory transport: what the proxy wrote to it, and whether it closed it."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False
        self.protocol: Any = None

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def write(self, data: bytes) -> None:
        self.buf += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.buf += p

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str) -> Any:
        return _Tls() if name == "ssl_object" else None

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, p: Any) -> None:
        self.protocol = p


class _Tls:
    """What a pool asks of a new peer connection's TLS session: its version, for the link stats."""

    def version(self) -> str:
        return "TLSv1.3"


class Play:
    """One client connection to the inbound side of host h2, and the app connection it uses."""

    def __init__(self, state: str) -> None:
        build_topology(state, [HostSpec("h1", "127.0.9.1", [LocalSpec("a")]),
                               HostSpec("h2", "127.0.9.2", [LocalSpec("b", instances=[18080], outbound=False)])])
        self.rt = rt = Runtime(load_snapshot(f"{state}/h2/snapshot.json"))
        side = InboundSide(rt, "a", "spiffe://glassmesh.local/service/a", "b")
        self.pool = rt.pool(PoolKey("127.0.9.2", 18080, None, None), side.link)
        self.up = UpstreamConn(rt, self.pool)
        self.app = Wire()
        self.up.connection_made(self.app)
        self.pool.put(self.up)
        self.conn = ServerConn(rt, side)
        self.client = Wire()
        self.conn.connection_made(self.client)

    def client_sends(self, data: bytes) -> None:
        self.conn.data_received(data)

    def app_sends(self, data: bytes) -> None:
        self.up.data_received(data)

    def app_gets(self) -> bytes:
        return self.app.take()

    def sent(self, request: bytes) -> Any:
        """The client sends a request, the app reads it: its exchange, now waiting for the answer."""
        self.client_sends(request)
        self.app_gets()
        return self.conn.queue[0]

    def client_gets(self) -> bytes:
        return self.client.take()


@contextlib.contextmanager
def stage() -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """A state directory and an event loop (set, not running) for one case, both gone after it."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        with tempfile.TemporaryDirectory() as d:
            yield d, loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def play() -> Iterator[Play]:
    with stage() as (d, _):
        yield Play(d)


def state_of(conn: ServerConn) -> str:
    """The state of the exchange in front of a client connection's queue (or "-" when none is)."""
    q = conn.queue
    return STATE_NAMES[q[0].state] if q else "-"


def head_of(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_a_get_goes_to_the_app_and_its_answer_back(play: Play) -> None:
    play.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, x-drop\r\nx-drop: 1\r\n\r\n")
    ex = play.conn.queue[0]
    assert ex.state == SENT
    sent = head_of(play.app_gets())
    assert sent[0] == b"GET /x HTTP/1.1" and b"Host: b" in sent
    assert not any(h.lower().startswith((b"connection", b"x-drop")) for h in sent[1:]), "hop-by-hop removed"
    assert any(h.startswith(b"glassmesh-source: ") for h in sent), "the caller's identity added"
    assert play.client_gets() == b""
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok")
    assert b"glassmesh-trail: h2/inbound;dur=" in out and b"content-length: 2" in out
    assert play.pool.take() is play.up, "the app connection went back to the pool"
    assert ex.state == DONE and state_of(play.conn) == "-"


def test_pipelined_requests_go_one_at_a_time(play: Play) -> None:
    play.client_sends(b"GET /1 HTTP/1.1\r\nHost: b\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\n")
    assert head_of(play.app_gets())[0] == b"GET /1 HTTP/1.1"
    assert play.app_gets() == b"", "the second waits for the first answer"
    assert [STATE_NAMES[ex.state] for ex in play.conn.queue] == ["sent", "queued"]
    assert play.conn.queue[1].state == QUEUED
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
    assert play.client_gets().endswith(b"\r\n\r\n1")
    assert head_of(play.app_gets())[0] == b"GET /2 HTTP/1.1"
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2")
    assert play.client_gets().endswith(b"\r\n\r\n2")


def test_head_answer_has_no_body_and_the_connection_stays(play: Play) -> None:
    play.client_sends(b"HEAD /x HTTP/1.1\r\nHost: b\r\n\r\n")
    play.app_gets()
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"\r\n\r\n") and b"content-length: 5000" in out
    assert not play.client.closed and play.pool.take() is play.up


def test_100_continue_then_the_body_then_the_answer(play: Play) -> None:
    play.client_sends(b"POST /up HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    assert b"Expect: 100-continue" in play.app_gets()
    play.app_sends(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert play.client_gets() == b"HTTP/1.1 100 Continue\r\n\r\n"
    play.client_sends(b"abc")
    assert play.app_gets() == b"abc"
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert play.client_gets().startswith(b"HTTP/1.1 200 OK\r\n")


def test_trailers_cross_both_ways(play: Play) -> None:
    play.client_sends(b"POST /up HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\nx-sum: 1\r\nhost: evil\r\n\r\n")
    assert play.app_gets().endswith(b"\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n")
    play.app_sends(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n")
    assert play.client_gets().endswith(b"\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n")


def test_a_malformed_request_gets_400_and_the_connection_ends(play: Play) -> None:
    play.client_sends(b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 400 ") and b"glassmesh-error: bad_request; hop=h2/inbound" in out
    assert play.client.closed and play.app_gets() == b"", "nothing reached the app"


def test_the_app_closing_mid_answer_ends_the_client_connection(play: Play) -> None:
    play.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    play.app_gets()
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert play.client_gets().endswith(b"abc")
    ex = play.conn.queue[0]
    assert ex.state == HEAD_BACK
    play.up.connection_lost(None)
    assert play.client.closed, "a cut answer is never passed off as whole"
    assert ex.state == FAILED


def test_the_app_closing_before_answering_a_post_gets_502(play: Play) -> None:
    ex = play.sent(b"POST /x HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\n\r\nx")
    play.up.connection_lost(None)
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 502 ") and b"glassmesh-error: upstream_reset; hop=h2/inbound" in out
    assert ex.state == FAILED


def test_an_app_answer_that_is_not_http_gets_502(play: Play) -> None:
    play.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    play.app_gets()
    play.app_sends(b"SSH-2.0-OpenSSH_9.2\r\n")
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 502 ") and b"upstream_protocol_error" in out
    assert play.app.closed


def test_a_response_timeout_gets_504(play: Play) -> None:
    ex = play.sent(b"GET /slow HTTP/1.1\r\nHost: b\r\n\r\n")
    play.conn.response_timeout(ex)
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 504 ") and b"response_timeout" in out
    assert play.app.closed, "the app connection that did not answer is not reused"
    assert ex.state == FAILED


def test_a_client_that_leaves_abandons_its_exchange(play: Play) -> None:
    ex = play.sent(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    play.conn.connection_lost(None)
    assert ex.state == ABANDONED and play.app.closed, "the app connection it held is not reused"


def test_an_upgrade_answered_101_becomes_a_tunnel_both_ways(play: Play) -> None:
    play.client_sends(b"GET /ws HTTP/1.1\r\nHost: b\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                      + b"".join(encode(b"early")))
    sent = head_of(play.app_gets())
    assert b"connection: upgrade" in sent and b"upgrade: websocket" in sent
    ex = play.conn.queue[0]
    play.app_sends(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert ex.state == TUNNEL
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 101 ") and b"upgrade: websocket" in out
    assert play.app_gets() == b"early", "what the client sent after its upgrade request, held until the 101"
    # From here on the connections are a byte relay (tcp.Relay): the peer's side in frames, the app's plain.
    play.app.protocol.data_received(b"from app")
    assert play.client_gets() == b"".join(encode(b"from app"))
    play.client.protocol.data_received(b"".join(encode(b"from client")))
    assert play.app_gets() == b"from client"
    assert play.pool.take() is None, "the tunnelled app connection is no longer pooled"


class Dial:
    """A pool's connector, in memory: each connect takes the next outcome of a script shared by all pools.

    An outcome is a ConnectError (the connect fails, nothing was sent) or a Wire (the peer
    proxy's end of a new connection, which records what the proxy writes to it).
    """

    def __init__(self, key: PoolKey, script: list[ConnectError | Wire], asked: list[tuple[str, int]]) -> None:
        self.key = key
        self.script = script
        self.asked = asked
        self.ssl_ctx: Any = None
        self.timeout_s = 1.0

    async def connect(self, factory: Any) -> tuple[Any, Any]:
        self.asked.append((self.key.host, self.key.port))
        out = self.script.pop(0)
        if isinstance(out, ConnectError):
            raise out
        proto = factory()
        out.protocol = proto
        proto.connection_made(out)
        return out, proto


class OutPlay:
    """One app connection to the outbound side of host h1; service b has an instance on h2 and one on h3.

    Peers are reached over HTTP/1.1 (peer_protocol: http1), through Dial: no socket is opened.
    """

    def __init__(self, state: str, loop: asyncio.AbstractEventLoop) -> None:
        build_topology(state, [HostSpec("h1", "127.0.9.1", [LocalSpec("a")]),
                               HostSpec("h2", "127.0.9.2", [LocalSpec("b", instances=[18080], outbound=False)]),
                               HostSpec("h3", "127.0.9.3", [LocalSpec("b", instances=[18080], outbound=False)])])
        snap = msgspec.structs.replace(load_snapshot(f"{state}/h1/snapshot.json"), peer_protocol="http1")
        self.loop = loop
        self.rt = rt = Runtime(snap)
        self.side = OutboundSide(rt, "a")
        self.script: list[ConnectError | Wire] = []
        self.asked: list[tuple[str, int]] = []
        for host in ("127.0.9.2", "127.0.9.3"):
            pool = rt.pool(PoolKey(host, 4143, "a", "b"), self.side.link_for("b"))
            pool.connector = Dial(pool.key, self.script, self.asked)  # type: ignore[assignment]
        self.conn = ServerConn(rt, self.side)
        self.client = Wire()
        self.conn.connection_made(self.client)

    def client_sends(self, data: bytes) -> None:
        self._in_loop(self.conn.data_received, data)

    def peer_sends(self, peer: Wire, data: bytes) -> None:
        self._in_loop(peer.protocol.data_received, data)

    def _in_loop(self, f: Any, data: bytes) -> None:
        """f(data) as the event loop would call it, then the tasks it started (a connect) until they wait."""
        async def call() -> None:
            f(data)
            for _ in range(5):
                await asyncio.sleep(0)
        self.loop.run_until_complete(call())

    def client_gets(self) -> bytes:
        return self.client.take()


@pytest.fixture
def out() -> Iterator[OutPlay]:
    with stage() as (d, loop):
        yield OutPlay(d, loop)


def test_outbound_a_get_goes_to_a_peer_with_the_mesh_headers(out: OutPlay) -> None:
    peer = Wire()
    out.script.append(peer)
    out.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    sent = head_of(peer.take())
    assert sent[0] == b"GET /x HTTP/1.1"
    assert any(h.startswith(b"x-request-id: ") for h in sent) and any(h.startswith(b"traceparent: ") for h in sent)
    out.peer_sends(peer, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                b"glassmesh-trail: h2/inbound;dur=0.100\r\n\r\nok")
    got = out.client_gets()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"\r\n\r\nok")
    assert b"glassmesh-trail: h1/outbound;dur=" in got and b", h2/inbound;dur=0.100" in got
    assert b"glassmesh-attempts" not in got


def test_outbound_a_connect_failure_goes_to_the_other_endpoint(out: OutPlay) -> None:
    peer = Wire()
    out.script += [ConnectError("connect_refused", "refused"), peer]
    out.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    ex = out.conn.queue[0]
    assert ex.state == SENT and ex.attempts == 2
    assert len(out.asked) == 2 and out.asked[0] != out.asked[1], "the second try went to the other endpoint"
    assert head_of(peer.take())[0] == b"GET /x HTTP/1.1"
    out.peer_sends(peer, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert ex.state == DONE
    got = out.client_gets()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and b"glassmesh-attempts: 2" in got


def test_outbound_connect_failures_everywhere_get_a_mesh_error(out: OutPlay) -> None:
    out.script += [ConnectError("connect_refused", "refused"), ConnectError("connect_timeout", "no answer")]
    out.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    got = out.client_gets()
    assert got.startswith(b"HTTP/1.1 504 ") and b"glassmesh-error: connect_timeout; hop=h1/outbound" in got
    assert b"glassmesh-attempts: 2" in got


def test_outbound_a_peers_503_before_any_app_goes_to_the_other_endpoint(out: OutPlay) -> None:
    first, second = Wire(), Wire()
    out.script += [first, second]
    out.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    ex = out.conn.queue[0]
    first.take()
    out.peer_sends(first, b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n"
                                 b"glassmesh-error: connect_refused; hop=h2/inbound\r\n\r\nnope")
    assert out.client_gets() == b"", "the peer's error is not passed on while another endpoint may answer"
    assert ex.state == SENT and ex.attempts == 2
    assert len(out.asked) == 2 and out.asked[0] != out.asked[1]
    assert head_of(second.take())[0] == b"GET /x HTTP/1.1"
    out.peer_sends(second, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    got = out.client_gets()
    assert got.startswith(b"HTTP/1.1 200 OK\r\n") and got.endswith(b"ok") and b"glassmesh-attempts: 2" in got


def test_outbound_a_peers_503_for_a_post_that_may_have_reached_an_app_is_passed_on(out: OutPlay) -> None:
    peer = Wire()
    out.script.append(peer)
    out.client_sends(b"POST /x HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\n\r\nx")
    peer.take()
    out.peer_sends(peer, b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                b"glassmesh-error: upstream_reset; hop=h2/inbound\r\n\r\n")
    got = out.client_gets()
    assert got.startswith(b"HTTP/1.1 502 ") and b"glassmesh-error: upstream_reset; hop=h2/inbound" in got
    assert len(out.asked) == 1, "not sent again"


def test_outbound_a_request_waits_routed_while_its_connection_opens(out: OutPlay) -> None:
    async def case() -> None:
        out.conn.data_received(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
        ex = out.conn.queue[0]
        assert ex.state == ROUTED and out.asked == [], "the connect task has not run yet"
        assert state_of(out.conn) == "routed"
        out.conn.connection_lost(None)
        assert ex.state == ABANDONED
        for _ in range(3):
            await asyncio.sleep(0)
    out.script.append(Wire())
    out.loop.run_until_complete(case())


def _cycle_garbage(kinds: tuple[type, ...]) -> list[str]:
    """The objects of `kinds` that only the cyclic collector could free (collected, kept in gc.garbage)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sorted(type(o).__name__ for o in gc.garbage if isinstance(o, kinds))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("app_closes", [False, True])
def test_closed_connections_are_freed_at_once_not_by_the_cyclic_collector(play: Play, app_closes: bool) -> None:
    # A connection, its codec reader and llhttp's parser used to hold each other: every closed
    # connection waited for Python's cyclic collector, ~26,000 instructions per new connection.
    kinds = (ServerConn, UpstreamConn, RequestReader, ResponseReader)
    play.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    play.app_gets()
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + (b"Connection: close\r\n" if app_closes else b"")
                   + b"\r\nok")
    assert play.client_gets().endswith(b"\r\n\r\nok")
    gc.collect()
    gc.disable()
    try:
        play.conn.connection_lost(None)
        play.up.connection_lost(None)
        assert play.pool.take() is None
        del play.conn, play.up
        assert _cycle_garbage(kinds) == []
    finally:
        gc.enable()


def test_a_released_reader_reads_nothing_and_keeps_what_it_read() -> None:
    rec = Recorder()
    r = ResponseReader(8192, rec)
    r.expect(False, False)
    r.feed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nglassmesh-error: no_endpoints\r\n\r\n")
    assert rec.take()[0::2] == [HEAD, END]
    r.release()
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert rec.take() == [], "a released reader tells no one"
    assert r.status == 503 and r.rh is not None and r.rh.error == b"no_endpoints", \
        "the trace ring and tap read the last head after the close"
    q = RequestReader(8192, 100, rec)
    q.release()
    q.feed(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    assert rec.take() == []


def test_a_defect_in_the_proxy_is_an_internal_error_never_the_clients_fault(
        play: Play, capfd: pytest.CaptureFixture[str]) -> None:
    def broken_pool(*args: Any) -> Any:
        raise RuntimeError("a defect in the pools")

    play.rt.pool = broken_pool  # type: ignore[method-assign]
    play.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), out[:80]
    assert b"glassmesh-error: internal_error; hop=h2/inbound" in out, "not a 400 'malformed request'"
    assert b"defect in the pools" not in out, "the exception's text stays in the proxy's log"
    err = capfd.readouterr().err
    assert "RuntimeError: a defect in the pools" in err and "Traceback" in err, err


def test_a_defect_after_the_answer_is_logged_and_the_answer_stands(
        play: Play, capfd: pytest.CaptureFixture[str]) -> None:
    def broken_observer(ex: Any, status: int, reason: str) -> None:
        raise KeyError("a defect in an observer")

    play.rt.observers.append(broken_observer)
    play.client_sends(b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n")
    play.app_gets()
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    out = play.client_gets()
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nok"), out
    err = capfd.readouterr().err
    assert "KeyError: 'a defect in an observer'" in err and "upstream_protocol_error" not in err, err
