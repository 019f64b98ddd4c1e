"""Virtual connections over one TLS connection (glassmesh-mux/1; the frames are in protocols/mux.py).

A Stream behaves like an asyncio transport, so the HTTP code above it does
not know whether it talks over a dedicated TLS connection or a stream.
Many requests in flight share one TLS connection (one handshake, one set of
buffers) with per-stream flow control, so that a slow reader holds up only
its own stream.

Streams also carry tcp links (a stream opened with FLAG_TCP): each client
connection of a link is a stream of the link's one TLS connection, so it
costs no handshake, and its bytes share the TLS writes of the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from glassmesh.protocols import mux as m
from glassmesh.proxy.log import log

BATCH = 4  # under load, writes held back at most this many, or to the end of the loop turn (see queue_many)
BUSY_GAP_S = 100e-6  # writes closer together than this mean the link is busy
_perf = time.perf_counter


def _log(msg: str) -> None:
    log(msg)


class StreamUser(asyncio.Protocol):
    """A compiled protocol over streams (the HTTP connections): a stream calls it natively.

    Any other protocol (a byte relay after an upgrade) is called by method name,
    a lookup on its type each time.
    """

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def going_away(self) -> None:
        """The connection this stream is on sent GOAWAY: no new request on it (the one in flight finishes)."""


class Stream:
    """One virtual connection; implements the parts of asyncio.Transport the proxy uses."""

    __slots__ = (
        "conn", "id", "protocol", "user", "send_window", "pending", "recv_buf", "read_paused",
        "write_paused", "local_fin", "remote_fin", "closing", "lost", "unacked", "opened", "open_flag",
        "reset_reason", "recv_window",
    )

    def __init__(self, conn: MuxConnection, sid: int, protocol: Any, opened: bool) -> None:
        self.conn = conn
        self.id = sid
        self.protocol = protocol
        self.user: StreamUser | None = protocol if isinstance(protocol, StreamUser) else None
        self.send_window = m.INITIAL_WINDOW
        self.pending: list[bytes] = []  # bytes waiting for window
        self.recv_buf: list[bytes | None] = []  # while reading is paused; None = FIN
        self.read_paused = False
        self.write_paused = False
        self.local_fin = False
        self.remote_fin = False
        self.closing = False
        self.lost = False
        self.unacked = 0  # bytes delivered to our protocol not yet granted back to the sender
        # What the peer may still send before we grant more: data beyond it is a peer that ignores flow
        # control (and would make recv_buf, filled while reading is paused, grow without bound).
        self.recv_window = m.INITIAL_WINDOW
        self.opened = opened  # False until our first frame (with OPEN) has gone out
        self.open_flag = m.FLAG_OPEN  # the flags of that first frame (FLAG_TCP too for a tcp stream)
        self.reset_reason = ""  # the peer's reason, once it reset the stream

    # --- transport API -------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closing or self.local_fin or self.lost or not data:
            return
        if self.pending or len(data) > self.send_window:
            self.pending.append(bytes(data))
            self._drain()
            return
        self.send_window -= len(data)
        self._send(data, 0)

    def writelines(self, parts: Any) -> None:
        self.write(b"".join(parts))

    def write_eof(self) -> None:
        if self.local_fin or self.lost:
            return
        self.local_fin = True
        if not self.pending:
            self._send(b"", m.FLAG_FIN)
            self._maybe_done()

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None:
        """Send what is buffered, then FIN; our protocol hears connection_lost right after."""
        if self.closing or self.lost:
            return
        self.closing = True
        self.recv_buf = []
        if not self.local_fin:
            self.local_fin = True
            if not self.pending:
                self._send(b"", m.FLAG_FIN)
        self.conn.loop.call_soon(self._lose, None)

    def abort(self, reason: str = "abort") -> None:
        if self.lost:
            return
        self.pending = []
        if self.opened:
            self.conn.queue(m.reset(self.id, reason))
        self.conn.forget(self)
        self._lose(None)

    def is_closing(self) -> bool:
        return self.closing or self.lost

    def pause_reading(self) -> None:
        self.read_paused = True

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.recv_buf:
                self.conn.loop.call_soon(self._deliver_buffered)

    def is_reading(self) -> bool:
        return not self.read_paused

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the stream's send window is its buffer limit

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.pending))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol
        self.user = protocol if isinstance(protocol, StreamUser) else None

    def get_protocol(self) -> Any:
        return self.protocol

    # --- internals -------------------------------------------------------------
    def _send(self, data: bytes, flags: int) -> None:
        if not self.opened:
            flags |= self.open_flag
            self.opened = True
        self.conn.queue_many(m.data(self.id, data, flags))

    def _drain(self) -> None:
        """Send pending bytes as far as the window allows."""
        while self.pending and self.send_window > 0:
            head = self.pending[0]
            if len(head) <= self.send_window:
                self.pending.pop(0)
                self.send_window -= len(head)
                self._send(head, 0)
            else:
                n = self.send_window
                self.pending[0] = head[n:]
                self.send_window = 0
                self._send(head[:n], 0)
        if self.pending:
            if not self.write_paused:
                self.write_paused = True
                self.protocol.pause_writing()
        else:
            if self.local_fin:
                self._send(b"", m.FLAG_FIN)
                self._maybe_done()
            if self.write_paused and not self.conn.write_paused:
                self.write_paused = False
                self.protocol.resume_writing()

    def _credit(self, n: int) -> None:
        self.send_window += n
        if self.pending:
            self._drain()
        elif self.write_paused and not self.conn.write_paused:
            self.write_paused = False
            self.protocol.resume_writing()

    def _received(self, data: bytes, fin: bool) -> None:
        n = len(data)
        self.recv_window -= n
        if self.recv_window < 0:
            raise m.MuxError(f"stream {self.id}: {-self.recv_window} bytes sent beyond the window granted")
        if self.closing or self.lost:
            if data:
                self.recv_window += n
                self.conn.queue(m.window(self.id, n))
            if fin:
                self.remote_fin = True
                self._maybe_done()
            return
        if self.read_paused or self.recv_buf:
            if data:
                self.recv_buf.append(data)
            if fin:
                self.recv_buf.append(None)
            return
        if data:
            self._grant(len(data))
            self._deliver(data)
        if fin:
            self._eof()

    def _deliver_buffered(self) -> None:
        while self.recv_buf and not self.read_paused and not self.lost and not self.closing:
            item = self.recv_buf.pop(0)
            if item is None:
                self._eof()
            else:
                self._grant(len(item))
                self._deliver(item)

    def _deliver(self, data: bytes) -> None:
        u = self.user
        if u is not None:
            u.data_received(data)  # native
        else:
            self.protocol.data_received(data)

    def _grant(self, n: int) -> None:
        self.unacked += n
        if self.unacked >= m.INITIAL_WINDOW // 4:
            self.conn.queue(m.window(self.id, self.unacked))
            self.recv_window += self.unacked
            self.unacked = 0

    def _eof(self) -> None:
        self.remote_fin = True
        keep_open = self.protocol.eof_received()
        if not keep_open and not self.closing:
            self.close()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.local_fin and self.remote_fin and not self.pending:
            self.conn.forget(self)
            if not self.lost and not self.closing:
                self.conn.loop.call_soon(self._lose, None)

    def _lose(self, exc: BaseException | None) -> None:
        if self.lost:
            return
        self.lost = True
        if self.local_fin and self.remote_fin:
            self.conn.forget(self)
        self.protocol.connection_lost(exc)

    def _reset(self, reason: str) -> None:
        self.reset_reason = reason
        self.pending = []
        self.conn.forget(self)
        self._lose(ConnectionResetError(f"stream reset by peer: {reason}"))


class MuxConnection(asyncio.Protocol):
    """One TLS connection carrying streams. The client side opens them; the server side accepts them."""

    def __init__(self, on_stream: Callable[[], Any] | None = None,
                 on_lost: Callable[[MuxConnection], None] | None = None, workers: int = 1,
                 on_tcp_stream: Callable[[], Any] | None = None,
                 on_goaway: Callable[[MuxConnection], None] | None = None) -> None:
        self.on_stream = on_stream  # server side: makes the protocol of a new stream
        self.on_tcp_stream = on_tcp_stream  # server side: ... of a new tcp stream (None: refused)
        self.on_lost = on_lost
        self.on_goaway = on_goaway  # client side: the peer said GOAWAY (the pool stops using this connection)
        self.transport: Any = None
        self.t_write: Callable[[bytes], None] | None = None  # transport.write, bound once
        self.loop = asyncio.get_event_loop()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.decoder = m.Decoder()
        self.out: list[bytes] = []
        self.turn_started = False
        self.held = 0
        self.last_queue = 0.0
        self.write_paused = False
        self.lost = False
        self.workers = workers  # server side: what SETTINGS tells the peer
        self.peer_workers = 1  # client side: what the peer's SETTINGS said
        self.peer_tcp = False  # client side: the peer takes tcp streams (its SETTINGS said so)
        self.settings_seen = False
        self.peer_version = 0  # major << 16 | minor, from the peer's SETTINGS (0 until they come)
        self.refused = ""  # why this connection was refused (an incompatible major version), by either side
        self.skipped = 0  # frames of types this build does not know (a newer peer's), skipped
        # For the sweeper (inbound side): data came since its last look, and since when it has been
        # idle with no stream open; an idle peer connection is closed after the idle timeout.
        self.active = True
        self.idle_since = 0.0
        self.settings_waiters: list[asyncio.Future[bool]] = []
        # GOAWAY, sent (server side, the proxy drains) or received (client side): no new stream on this
        # connection, which closes once its last stream is done.
        self.leaving = False
        self.goaway_sent = False  # leaving, and the peer was told (it knows GOAWAY: mux minor 2 and later)
        self.last_opened = 0  # server side: the highest stream id the peer opened (what GOAWAY names)

    # --- client side -------------------------------------------------------------
    def open(self, factory: Callable[[], Any], tcp: bool = False) -> tuple[Stream, Any]:
        """A new stream; a tcp stream is announced at once, so that the peer connects to its app now."""
        sid = self.next_id
        self.next_id += 2
        proto = factory()
        s = self.streams[sid] = Stream(self, sid, proto, opened=False)
        if tcp:
            s.open_flag = m.FLAG_OPEN | m.FLAG_TCP
            s._send(b"", 0)
        proto.connection_made(s)
        return s, proto

    def settled(self) -> asyncio.Future[bool]:
        """Resolves once the peer's SETTINGS arrived (True), or the connection went first (False)."""
        fut: asyncio.Future[bool] = self.loop.create_future()
        if self.settings_seen or self.lost:
            fut.set_result(self.settings_seen)
        else:
            self.settings_waiters.append(fut)
        return fut

    def _settle(self) -> None:
        waiters, self.settings_waiters = self.settings_waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(self.settings_seen)

    def usable(self) -> bool:
        return (not self.lost and not self.leaving and not self.transport.is_closing()
                and len(self.streams) < m.MAX_STREAMS)

    # --- going away (a proxy that drains; see glassmesh/proxy/drain.py) -------------
    def go_away(self) -> None:
        """Server side: serve the streams open now, refuse later ones, close once they are done."""
        if self.leaving or self.lost:
            return
        self.leaving = True
        if self.peer_version & 0xFFFF >= m.MINOR_GOAWAY:
            self.goaway_sent = True
            self.queue(m.goaway(self.last_opened))
        # A peer of an older release cannot read GOAWAY nor resend a refused stream: its streams are served
        # until the connection is idle, then it is closed, and the peer connects anew (to our successor).
        for st in list(self.streams.values()):
            if st.user is not None:
                st.user.going_away()
        self._close_if_done()

    def _peer_goes_away(self, last: int) -> None:
        """Client side: the peer serves streams up to `last` and no new one; later ones it resets (unserved)."""
        if self.leaving:
            return
        self.leaving = True
        if self.on_goaway is not None:
            self.on_goaway(self)
        self._close_if_done()

    def _close_if_done(self) -> None:
        if not self.streams and not self.lost:
            self._write()
            self.transport.close()

    # --- frames out --------------------------------------------------------------
    def queue(self, frame: bytes) -> None:
        self.queue_many([frame])

    def queue_many(self, frames: list[bytes]) -> None:
        """Write at once when the link is quiet; under load, gather writes into fewer TLS writes.

        Quiet (the previous write was over BUSY_GAP_S ago): a lone request leaves at
        once, since holding it to the end of the loop turn cost about 30 us at one
        connection. Busy: writes are held until BATCH of them or the end of the
        turn, whichever comes first, which saved about 9% CPU per request at 32
        connections (wrk, both proxies' CPU from /proc) against writing each at once.
        How many to hold trades CPU against convoys: requests held together move
        through the next hops together, and the other core idles meanwhile. At 32
        connections (10 interleaved runs each, unpinned): 4 gave 4.6% more req/s
        than 8 at the same CPU per request (pinned: 2% less), 2 another 1.6% req/s
        for 4.6% more CPU, 32 (the whole turn) 7% less CPU and 9% fewer req/s.
        """
        self.out += frames
        now = _perf()
        busy = now - self.last_queue < BUSY_GAP_S
        self.last_queue = now
        if not busy:
            self._write()
            return
        if not self.turn_started:
            self.turn_started = True
            self.loop.call_soon(self._end_turn)
        self.held += 1
        if self.held >= BATCH:
            self._write()

    def _end_turn(self) -> None:
        self.turn_started = False
        self._write()

    def _write(self) -> None:
        self.held = 0
        out = self.out
        w = self.t_write
        if out and not self.lost and w is not None:
            self.out = []
            w(b"".join(out) if len(out) > 1 else out[0])

    def forget(self, s: Stream) -> None:
        if self.streams.get(s.id) is s:
            del self.streams[s.id]
            if self.leaving:
                self._close_if_done()

    # --- asyncio plumbing ----------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.t_write = transport.write
        transport.set_write_buffer_limits(high=1 << 20)
        if self.on_stream is not None:
            self.out.append(m.settings(self.workers, m.SETTINGS_TCP_STREAMS if self.on_tcp_stream else 0))
            self._write()
        else:  # ours (the version) goes out with the first stream's frames: no write of its own
            self.out.append(m.settings(1))

    def data_received(self, data: bytes) -> None:
        self.active = True
        try:
            frames = self.decoder.feed(data)
            for ftype, flags, sid, payload in frames:
                s = self.streams.get(sid)
                if ftype == m.DATA:
                    if s is None:
                        if not flags & m.FLAG_OPEN or self.on_stream is None or sid % 2 == 0:
                            if not flags & m.FLAG_OPEN:
                                continue  # late data for a stream we already closed
                            raise m.MuxError(f"stream {sid} opened by the wrong side")
                        if self.goaway_sent:  # opened after our GOAWAY: never served, the caller sends it again
                            self.queue(m.reset(sid, m.REFUSED_GOAWAY))
                            continue
                        if len(self.streams) >= m.MAX_STREAMS:
                            self.queue(m.reset(sid, "too many streams"))
                            continue
                        self.last_opened = sid
                        if flags & m.FLAG_TCP:
                            if self.on_tcp_stream is None:
                                self.queue(m.reset(sid, "tcp streams not accepted"))
                                continue
                            proto = self.on_tcp_stream()
                        else:
                            proto = self.on_stream()
                        s = self.streams[sid] = Stream(self, sid, proto, opened=True)
                        proto.connection_made(s)
                    s._received(payload, bool(flags & m.FLAG_FIN))
                elif ftype == m.WINDOW:
                    if s is not None:
                        s._credit(m.window_increment(payload))
                elif ftype == m.SETTINGS:
                    workers, settings = m.parse_settings(payload)
                    refused = m.version_refusal(settings)
                    if refused:
                        self._refuse(refused)
                        return
                    self.peer_workers = workers
                    self.peer_tcp = bool(flags & m.SETTINGS_TCP_STREAMS)
                    self.peer_version = settings[m.SETTING_VERSION]
                    self.settings_seen = True
                    self._settle()
                elif ftype == m.GOAWAY:
                    self._peer_goes_away(m.goaway_last(payload))
                elif ftype == m.RESET:
                    if s is not None:
                        s._reset(payload.decode("utf-8", "replace"))
                    elif sid == 0:  # the peer refused the connection
                        self.refused = payload.decode("utf-8", "replace")
                        _log(f"mux connection {self._peer()} refused by the peer: {self.refused}")
                else:
                    self.skipped += 1  # a frame type of a newer release: skipped (protocols/mux.py, Versions)
        except m.MuxError:
            self.transport.abort()
        if self.out:
            self._write()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return f"{'from' if self.on_stream is not None else 'to'} {peer[0]}:{peer[1]}" if peer else ""

    def _refuse(self, reason: str) -> None:
        """An incompatible peer: say why (to it and in our log), then close; no stream is carried."""
        self.refused = reason
        _log(f"mux connection {self._peer()} refused: {reason}")
        self.out.append(m.reset(0, reason))
        self._write()
        self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        streams = list(self.streams.values())
        self.streams.clear()
        err = exc or ConnectionResetError(f"mux connection refused: {self.refused}" if self.refused
                                          else "mux connection closed")
        for s in streams:
            s.pending = []
            s._lose(err)
        self._settle()
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        for s in list(self.streams.values()):
            if not s.write_paused:
                s.write_paused = True
                s.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        for s in list(self.streams.values()):
            if s.write_paused and not s.pending:
                s.write_paused = False
                s.protocol.resume_writing()
