"""glassmesh-mux/1: frames, and two mux connections driven back to back without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glassmesh.protocols import mux as m
from glassmesh.proxy.mux import MuxConnection


@given(st.lists(st.tuples(st.integers(1, 99), st.binary(max_size=700), st.sampled_from([0, 1, 2, 3])), max_size=12),
       st.integers(min_value=1, max_value=50))
def test_frames_survive_any_split(frames, step):
    wire = b"".join(b"".join(m.data(sid, payload, flags)) for sid, payload, flags in frames)
    dec = m.Decoder()
    got = []
    for i in range(0, len(wire), step):
        got += dec.feed(wire[i:i + step])
    assert [(t, f, s, bytes(p)) for t, f, s, p in got] == [(m.DATA, f, s, p) for s, p, f in frames]


def test_big_payload_splits_with_open_first_and_fin_last():
    frames = m.data(7, b"x" * (m.MAX_PAYLOAD * 2 + 5), m.FLAG_OPEN | m.FLAG_FIN)
    dec = m.Decoder()
    got = dec.feed(b"".join(frames))
    assert [f for _, f, _, _ in got] == [m.FLAG_OPEN, 0, m.FLAG_FIN]
    assert sum(len(p) for *_, p in got) == m.MAX_PAYLOAD * 2 + 5


def test_protocol_errors_are_refused():
    with pytest.raises(m.MuxError):
        m.Decoder().feed(m.HEADER.pack(m.MAX_PAYLOAD + 1, m.DATA, 0, 1))
    with pytest.raises(m.MuxError):
        m.window_increment(b"\0\0\0\0")
    with pytest.raises(m.MuxError):
        m.parse_settings(b"\0\0\1")


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 2**32 - 1),
                          st.binary(max_size=300)), max_size=12),
       st.integers(min_value=1, max_value=40))
def test_frames_of_any_type_come_out_whole_so_unknown_ones_can_be_skipped(frames, step):
    """A newer peer's frame types are framed like any other: the decoder hands them out, in step."""
    wire = b"".join(m.HEADER.pack(len(p), t, f, s) + p for t, f, s, p in frames)
    dec = m.Decoder()
    got = []
    for i in range(0, len(wire), step):
        got += dec.feed(wire[i:i + step])
    assert [(t, f, s, bytes(p)) for t, f, s, p in got] == frames


@given(st.integers(0, 2**32 - 1), st.dictionaries(st.integers(2, 2**16 - 1), st.integers(0, 2**32 - 1), max_size=8),
       st.binary(max_size=5))
def test_settings_keep_what_they_know_and_skip_the_rest(workers, extra, tail):
    frame = m.settings(workers, 0, extra) + tail  # a newer peer: settings ids unknown here, odd bytes at the end
    payload = frame[m.HEADER_SIZE:]
    n, found = m.parse_settings(payload)
    assert n == max(1, min(workers, 1024)) and found[m.SETTING_VERSION] == m.MAJOR << 16 | m.MINOR
    assert m.version_refusal(found) == ""
    assert m.parse_settings(payload[:4]) == (n, {m.SETTING_VERSION: m.MAJOR << 16})  # a peer from before versions
    refusal = m.version_refusal({m.SETTING_VERSION: (m.MAJOR + 1) << 16 | 3})
    assert f"glassmesh-mux {m.MAJOR + 1}.3" in refusal and "incompatible major version" in refusal


class Wire:
    """A transport that keeps what is written until pumped into the other side."""

    def __init__(self) -> None:
        self.buf: list[bytes] = []
        self.closed = False
        self.peer: MuxConnection | None = None

    def write(self, data: bytes) -> None:
        self.buf.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Recorder(asyncio.Protocol):
    def __init__(self, keep_open: bool = True) -> None:
        self.data = b""
        self.eof = False
        self.lost: Any = "no"
        self.paused = 0
        self.resumed = 0
        self.keep_open = keep_open
        self.transport: Any = None

    def connection_made(self, t: Any) -> None:
        self.transport = t

    def data_received(self, d: bytes) -> None:
        self.data += d

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep_open

    def connection_lost(self, exc: Any) -> None:
        self.lost = exc

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1


@pytest.fixture
def pair():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    servers: list[Recorder] = []

    def on_stream() -> Recorder:
        r = Recorder()
        servers.append(r)
        return r

    client, server = MuxConnection(), MuxConnection(on_stream=on_stream)
    cw, sw = Wire(), Wire()
    client.connection_made(cw)
    server.connection_made(sw)

    def pump() -> None:
        for _ in range(50):
            loop.run_until_complete(asyncio.sleep(0))
            moved = False
            for conn, wire, peer in ((client, cw, server), (server, sw, client)):
                conn._write()
                while wire.buf:
                    peer.data_received(wire.buf.pop(0))
                    moved = True
            if not moved:
                return

    yield client, server, servers, pump
    loop.close()
    asyncio.set_event_loop(None)


def test_streams_carry_bytes_and_half_close(pair):
    client, _server, servers, pump = pair
    s1, c1 = client.open(Recorder)
    s2, c2 = client.open(Recorder)
    s1.write(b"hello one")
    s2.write(b"hello two")
    s1.write_eof()
    pump()
    assert [r.data for r in servers] == [b"hello one", b"hello two"]
    assert servers[0].eof and not servers[1].eof
    servers[0].transport.write(b"reply after your FIN")
    servers[0].transport.write_eof()
    pump()
    assert c1.data == b"reply after your FIN" and c1.eof
    assert c1.lost is None and servers[0].lost is None, "both FINs end the stream on both sides"
    assert s1.id not in client.streams


def test_send_window_pauses_the_writer_until_credit(pair):
    client, _server, servers, pump = pair
    s, c = client.open(Recorder)
    s.write(b"x")
    pump()
    srv = servers[0]
    srv.transport.pause_reading()  # the receiving app is slow
    s.write(b"y" * (m.INITIAL_WINDOW + 10))
    pump()
    assert c.paused == 1, "the writer is told to stop once the window is used up"
    assert len(srv.data) == 1
    srv.transport.resume_reading()
    pump()
    assert c.resumed == 1
    assert srv.data == b"x" + b"y" * (m.INITIAL_WINDOW + 10)


def test_reset_and_close(pair):
    client, _server, servers, pump = pair
    s, c = client.open(Recorder)
    s.write(b"a")
    pump()
    s.abort()
    pump()
    assert isinstance(servers[0].lost, ConnectionResetError)
    s2, c2 = client.open(Recorder)
    s2.write(b"b")
    s2.close()
    pump()
    assert servers[1].data == b"b" and servers[1].eof
    assert c2.lost is None


def test_connection_loss_reaches_every_stream(pair):
    client, _server, servers, pump = pair
    streams = [client.open(Recorder) for _ in range(3)]
    for s, _ in streams:
        s.write(b"x")
    pump()
    client.connection_lost(None)
    assert all(isinstance(p.lost, ConnectionResetError) for _, p in streams)
    assert not client.usable()


def test_a_stream_opened_by_the_wrong_side_ends_the_connection(pair):
    client, _server, _servers, _pump = pair
    client.data_received(b"".join(m.data(3, b"hi", m.FLAG_OPEN)))  # servers never open streams
    assert client.transport.closed


def test_quiet_link_writes_at_once_busy_link_batches(pair):
    client, _server, servers, pump = pair
    wire = client.transport
    streams = [client.open(Recorder)[0] for _ in range(32)]
    wire.buf.clear()
    client.last_queue = 0.0  # quiet: nothing written for a long time
    streams[0].write(b"alone")
    assert len(wire.buf) == 1, "a lone request leaves at once, without waiting for the loop"
    for s in streams:  # 32 connections writing in the same loop turn
        s.write(b"x" * 50)
    assert 2 <= len(wire.buf) <= 1 + 32 // m_batch() + 1, len(wire.buf)
    pump()
    assert sum(len(r.data) for r in servers) == 5 + 32 * 50


def m_batch() -> int:
    from glassmesh.proxy import mux as pm

    return pm.BATCH


def test_unknown_frames_and_settings_from_a_newer_peer_are_skipped(pair):
    client, server, servers, pump = pair
    s1, c1 = client.open(Recorder)
    s1.write(b"before")
    pump()
    assert client.peer_version == m.MAJOR << 16 | m.MINOR and server.peer_version == client.peer_version
    for conn in (client, server):  # both ways: frame types past GOAWAY (4) and a setting nobody knows
        conn.queue(m.HEADER.pack(3, 9, 0, 0) + b"new")
        conn.queue(m.HEADER.pack(2, 250, 0xFF, s1.id) + b"xx")
        conn.queue(m.settings(1, 0x80, {4242: 1}))
    s1.write(b" after")
    pump()
    assert servers[0].data == b"before after" and not client.lost and not server.lost
    assert client.skipped == 2 and server.skipped == 2
    servers[0].transport.write(b"back")
    pump()
    assert c1.data == b"back"


def test_a_peer_of_another_major_version_is_refused_and_both_sides_say_why(pair, capsys):
    client, server, servers, pump = pair
    client.out[:] = [m.settings(1, 0, {m.SETTING_VERSION: 2 << 16 | 1})]  # a client of major version 2
    s1, c1 = client.open(Recorder)
    s1.write(b"hello")
    pump()
    assert server.refused.startswith("peer speaks glassmesh-mux 2.1, this proxy 1.")
    assert client.refused == server.refused and not servers  # no stream was carried
    err = capsys.readouterr().err
    assert "refused: peer speaks glassmesh-mux 2.1" in err and "refused by the peer: peer speaks" in err, err


def test_the_accepting_side_says_how_many_workers_share_its_port():
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        client, server = MuxConnection(), MuxConnection(on_stream=Recorder, workers=3)
        cw, sw = Wire(), Wire()
        client.connection_made(cw)
        assert cw.buf == []  # the connecting side sends nothing until it opens a stream
        server.connection_made(sw)
        assert client.peer_workers == 1
        for b in sw.buf:
            client.data_received(b)
        assert client.peer_workers == 3
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    payload = m.settings(0)[m.HEADER_SIZE:], m.settings(1 << 20)[m.HEADER_SIZE:]
    assert m.settings_workers(payload[0]) == 1 and m.settings_workers(payload[1]) == 1024
    with pytest.raises(m.MuxError):
        m.settings_workers(b"\0")



def test_http_connections_are_called_natively_and_a_relay_by_name(pair):
    """The HTTP connections are StreamUsers (a stream calls them natively); set_protocol to any
    other protocol, as after an upgrade, goes back to calls by name and still delivers."""
    from glassmesh.proxy.http import ServerConn, UpstreamConn
    from glassmesh.proxy.mux import StreamUser

    assert issubclass(ServerConn, StreamUser) and issubclass(UpstreamConn, StreamUser)
    client, _server, servers, pump = pair
    s, u = client.open(StreamUser)
    assert s.user is u
    s.write(b"ping")
    pump()
    other = Recorder()
    s.set_protocol(other)
    assert s.user is None and s.get_protocol() is other
    servers[0].transport.write(b"to the relay")
    pump()
    assert other.data == b"to the relay"
    s.set_protocol(u)
    assert s.user is u


def _settings_from(server: MuxConnection) -> MuxConnection:
    """A connecting side that has read `server`'s first frames."""
    client = MuxConnection()
    client.connection_made(Wire())
    sw = Wire()
    server.connection_made(sw)
    assert not client.settings_seen
    for b in sw.buf:
        client.data_received(b)
    return client


def test_tcp_streams_are_offered_in_settings_and_older_peers_are_told_apart():
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        new = _settings_from(MuxConnection(on_stream=Recorder, on_tcp_stream=Recorder, workers=2))
        assert new.settings_seen and new.peer_tcp and new.peer_workers == 2
        # An older proxy: SETTINGS without flags; a caller then uses a TLS connection per tcp connection.
        old = _settings_from(MuxConnection(on_stream=Recorder, workers=2))
        assert old.settings_seen and not old.peer_tcp and old.peer_workers == 2
        fut = new.settled()
        assert fut.done() and fut.result() is True
        waiting = MuxConnection()
        waiting.connection_made(Wire())
        pending = waiting.settled()
        waiting.connection_lost(None)
        assert pending.done() and pending.result() is False
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def test_a_tcp_stream_opens_at_once_and_a_server_without_tcp_resets_it(pair):
    client, server, servers, pump = pair
    tcp_servers: list[Recorder] = []

    def on_tcp() -> Recorder:
        r = Recorder()
        tcp_servers.append(r)
        return r

    server.on_tcp_stream = on_tcp
    s, rec = client.open(Recorder, tcp=True)
    pump()
    assert len(tcp_servers) == 1 and servers == []  # announced before any byte, as a tcp stream
    s.write(b"PING\r\n")
    pump()
    assert tcp_servers[0].data == b"PING\r\n"
    tcp_servers[0].transport.abort("connect_refused")
    pump()
    assert s.reset_reason == "connect_refused" and isinstance(rec.lost, ConnectionResetError)
    server.on_tcp_stream = None  # a proxy that takes no tcp streams
    s2, rec2 = client.open(Recorder, tcp=True)
    pump()
    assert len(tcp_servers) == 1 and servers == []
    assert s2.reset_reason == "tcp streams not accepted" and isinstance(rec2.lost, ConnectionResetError)



def test_goaway_serves_open_streams_refuses_later_ones_and_closes_when_done(pair):
    """A draining proxy's GOAWAY: the caller opens no stream there again; what was open finishes."""
    client, server, servers, pump = pair
    told: list[MuxConnection] = []
    client.on_goaway = told.append
    s1, c1 = client.open(Recorder)
    s1.write(b"in flight")
    pump()
    assert server.last_opened == s1.id
    server.go_away()
    late, c_late = client.open(Recorder)  # sent before the GOAWAY arrives
    late.write(b"too late")
    pump()
    assert told == [client] and not client.usable(), "the caller moves new streams elsewhere"
    assert c_late.lost is not None and late.reset_reason == m.REFUSED_GOAWAY, "never served: safe to send again"
    assert [r.data for r in servers] == [b"in flight"]
    assert not server.transport.closed and not client.transport.closed, "the stream in flight runs on"
    servers[0].transport.write(b"answer")
    servers[0].transport.close()
    pump()
    assert c1.data == b"answer"
    s1.close()
    pump()
    assert server.transport.closed and client.transport.closed, "both close with the last stream"


def test_a_peer_of_an_older_release_gets_no_goaway_its_streams_are_served_then_the_idle_link_closes(pair):
    """Mux 1.1 (before GOAWAY) would read the frame as unknown and could not resend a refused stream: a
    draining proxy serves what such a peer opens, and closes the connection once nothing is open on it."""
    client, server, servers, pump = pair
    client.out[:] = [m.settings(1, 0, {m.SETTING_VERSION: 1 << 16 | 1})]  # a client of release 1.1
    s1, c1 = client.open(Recorder)
    s1.write(b"in flight")
    pump()
    assert server.peer_version == 1 << 16 | 1
    server.go_away()
    later, c_later = client.open(Recorder)
    later.write(b"opened while draining")
    pump()
    assert not server.goaway_sent and client.usable(), "no GOAWAY on the wire to an older peer"
    assert later.reset_reason in (None, "") and [r.data for r in servers] == [b"in flight", b"opened while draining"]
    for r in servers:
        r.transport.write(b"answer")
        r.transport.close()
    pump()
    assert c1.data == b"answer" and c_later.data == b"answer"
    s1.close()
    later.close()
    pump()
    assert server.transport.closed, "closed once idle: the older peer connects anew, to the successor"


def test_goaway_frame_round_trip():
    (ftype, flags, sid, payload), = m.Decoder().feed(m.goaway(41))
    assert (ftype, flags, sid) == (m.GOAWAY, 0, 0) and m.goaway_last(payload) == 41
    with pytest.raises(m.MuxError):
        m.goaway_last(b"\0")
