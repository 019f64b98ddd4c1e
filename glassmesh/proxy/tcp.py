"""TCP links: a byte pipe from a local port, over mutual TLS, to an instance of a service.

Between two proxies a link's connections travel one of two ways:

- as streams of the multiplexed TLS connection the proxies share
  (glassmesh-mux/1; a DATA frame flagged OPEN|TCP opens one): a client
  connection costs no TLS handshake, and the bytes of every connection ready in
  one loop turn leave in one TLS write. A half-close is the stream's FIN; a
  connection the far proxy cannot deliver is reset with the reason.
- toward a proxy that does not take tcp streams (its SETTINGS frame does not
  say so), or with "peer_protocol": "http1": a TLS connection per client
  connection (ALPN glassmesh-tcp/1). TLS through asyncio cannot half-close
  (there is no write_eof on a TLS transport), yet databases and RPC protocols
  rely on "I am done sending, now answer me", so that leg carries frames: a
  4-byte big-endian length and that many bytes; a zero length means the sender
  shut down its writing side.

Inbound ports take both. The frame codec and Relay/PlainSide/FramedSide also
carry HTTP Upgrade tunnels (http.py).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from glassmesh.proxy.connector import ConnectError
from glassmesh.proxy.log import log
from glassmesh.proxy.mux import StreamUser
from glassmesh.proxy.pool import Pool
from glassmesh.proxy.routing import PoolKey

if TYPE_CHECKING:
    from glassmesh.proxy.runtime import Runtime
    from glassmesh.proxy.stats import LinkStats

_LEN = struct.Struct("!I")
FIN = _LEN.pack(0)
MAX_FRAME = 1 << 20
HIGH_WATER = 1 << 20


class FrameDecoder:
    """Sans-IO: bytes in, (payload | None for FIN) out. Raises ValueError on a bad frame."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.need = -1  # payload bytes still to read of the current frame, -1: reading a length

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        while True:
            if self.need < 0:
                if n - pos < 4:
                    break
                (ln,) = _LEN.unpack_from(buf, pos)
                pos += 4
                if ln == 0:
                    out.append(None)
                    continue
                if ln > MAX_FRAME:
                    raise ValueError(f"frame of {ln} bytes is over the {MAX_FRAME} limit")
                self.need = ln
            take = min(self.need, n - pos)
            if take == 0:
                break
            out.append(bytes(buf[pos:pos + take]))
            pos += take
            self.need -= take
            if self.need == 0:
                self.need = -1
        del buf[:pos]
        return out


def encode(data: bytes) -> list[bytes]:
    if len(data) <= MAX_FRAME:
        return [_LEN.pack(len(data)), data]
    out: list[bytes] = []
    mv = memoryview(data)
    for i in range(0, len(data), MAX_FRAME):
        part = mv[i:i + MAX_FRAME]
        out += (_LEN.pack(len(part)), bytes(part))
    return out


class Relay:
    """An HTTP Upgrade tunnel (http.py): a plain side and a framed side; both close once both directions are done."""

    def __init__(self, link: LinkStats | None) -> None:
        self.plain: PlainSide | None = None
        self.framed: FramedSide | None = None
        self.plain_done = False  # plain peer sent EOF (FIN forwarded)
        self.framed_done = False  # FIN received (EOF written to plain peer)
        self.link = link
        self.closed = False

    def maybe_close(self) -> None:
        if self.plain_done and self.framed_done:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for t in (self.plain.transport if self.plain else None, self.framed.transport if self.framed else None):
            if t is not None:
                t.close()

    def plain_transport(self) -> Any:
        return self.plain.transport if self.plain is not None else None

    def framed_transport(self) -> Any:
        return self.framed.transport if self.framed is not None else None


class PlainSide(asyncio.Protocol):
    def __init__(self, relay: Relay, outbound: bool) -> None:
        self.relay = relay
        self.transport: Any = None
        self.outbound = outbound

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.relay.plain = self

    def data_received(self, data: bytes) -> None:
        r = self.relay
        if r.link is not None:
            if self.outbound:
                r.link.bytes_req += len(data)
            else:
                r.link.bytes_resp += len(data)
        r.framed_transport().writelines(encode(data))

    def eof_received(self) -> bool:
        r = self.relay
        r.plain_done = True
        r.framed_transport().write(FIN)
        r.maybe_close()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.relay.close()

    def pause_writing(self) -> None:
        t = self.relay.framed_transport()
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.relay.framed_transport()
        if t is not None:
            t.resume_reading()


class FramedSide(asyncio.Protocol):
    def __init__(self, relay: Relay, outbound: bool) -> None:
        self.relay = relay
        self.transport: Any = None
        self.decoder = FrameDecoder()
        self.outbound = outbound

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.relay.framed = self
        if self.relay.link is not None:
            self.relay.link.open_conns += 1

    def data_received(self, data: bytes) -> None:
        r = self.relay
        try:
            frames = self.decoder.feed(data)
        except ValueError:
            r.close()
            return
        link = r.link
        pt = r.plain_transport()
        for fr in frames:
            if fr is None:
                r.framed_done = True
                if pt.can_write_eof():
                    pt.write_eof()
                r.maybe_close()
            elif r.framed_done:
                r.close()  # data after the peer said it was done: a broken peer
                return
            else:
                if link is not None:
                    if self.outbound:
                        link.bytes_resp += len(fr)
                    else:
                        link.bytes_req += len(fr)
                pt.write(fr)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.relay.link is not None:
            self.relay.link.open_conns -= 1
        self.relay.close()

    def pause_writing(self) -> None:
        t = self.relay.plain_transport()
        if t is not None:
            t.pause_reading()

    def resume_writing(self) -> None:
        t = self.relay.plain_transport()
        if t is not None:
            t.resume_reading()


# --------------------------------------------------------------------------- tcp links


LOG_EVERY_S = 10.0  # at most one log line per (side, destination, reason) this often
_LINGER_RESET = struct.pack("ii", 1, 0)
_logged: dict[tuple[str, str, str], tuple[float, int]] = {}


def log_limited(side: str, destination: str, reason: str, message: str) -> None:
    """One line per (side, destination, reason) per LOG_EVERY_S; a dead app must not flood the log."""
    key = (side, destination, reason)
    now = time.monotonic()
    last, quiet = _logged.get(key, (-LOG_EVERY_S, 0))
    if now - last < LOG_EVERY_S:
        _logged[key] = (last, quiet + 1)
        return
    _logged[key] = (now, 0)
    more = f" ({quiet} more like it in the last {now - last:.0f} s)" if quiet else ""
    log(f"tcp link {message}{more}")


class FramedWriter:
    """Writes into a framed (glassmesh-tcp/1) connection: each write a frame, write_eof the zero frame."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.writelines(encode(data))

    def write_eof(self) -> None:
        self.transport.write(FIN)


class End(StreamUser):
    """One end of a Pipe: a client's or an app's socket, a stream, or a framed TLS connection.

    What it reads goes to `out`, the other end's writer; a half-close it
    reads goes there as write_eof. A StreamUser, so that a stream calls it
    natively (compiled with the hot path).
    """

    def __init__(self, pipe: Pipe, toward_app: bool, kind: str) -> None:
        self.pipe = pipe
        self.toward_app = toward_app  # what it reads goes toward the app: request bytes
        self.kind = kind  # "socket", "stream" or "framed"
        self.transport: Any = None
        self.out: Any = None
        self.n = 0  # bytes read
        self.eof = False  # its peer is done sending
        self.lost = False
        # Read before `out` was there: uvloop starts reading a socket right after connection_made,
        # even when that paused it (reading is paused again on the first read).
        self.early: list[bytes] = []

    def writer(self) -> Any:
        return self.transport

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.kind == "socket":
            # uvloop sets TCP_NODELAY itself; said here too, as small messages depend on it.
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.kind != "stream":
            transport.set_write_buffer_limits(high=HIGH_WATER)
        self.pipe.made(self)

    def data_received(self, data: bytes) -> None:
        if self.eof:  # bytes after the peer said it was done (a stream of a broken peer): drop the connection
            self.abort("protocol_error")
            return
        n = len(data)
        self.n += n
        if self.toward_app:
            self.pipe.link.bytes_req += n
        else:
            self.pipe.link.bytes_resp += n
        out = self.out
        if out is None:
            self.early.append(data)
            self.transport.pause_reading()  # effective now that reading has started: one read held at most
        else:
            out.write(data)

    def eof_received(self) -> bool:
        self.pipe.fin(self)
        return True

    def flush_early(self) -> None:
        if not self.early and not self.eof:
            return
        early, self.early = self.early, []
        for data in early:
            self.out.write(data)
        if self.eof:
            self.out.write_eof()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.pipe.lost(self)

    def pause_writing(self) -> None:
        other = self.pipe.other(self)
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.pipe.other(self)
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def abort(self, reason: str) -> None:
        """Gone at once: a reset, on a socket too, so that its peer does not take it for an answer."""
        t = self.transport
        if t is None or self.lost:
            return
        if self.kind == "stream":
            t.abort(reason)
            return
        if self.kind == "socket":
            sock = t.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
        t.abort()


class FramedEnd(End):
    """A glassmesh-tcp/1 connection: TLS with length-prefixed frames, a zero frame for a half-close."""

    def __init__(self, pipe: Pipe, toward_app: bool) -> None:
        super().__init__(pipe, toward_app, "framed")
        self.decoder = FrameDecoder()

    def writer(self) -> Any:
        return FramedWriter(self.transport)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.pipe.link.open_conns += 1

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ValueError:
            self.transport.abort()  # a broken peer
            return
        for fr in frames:
            if fr is None:
                self.pipe.fin(self)
            elif self.eof:
                self.transport.abort()  # data after the peer said it was done: a broken peer
                return
            else:
                End.data_received(self, fr)

    def eof_received(self) -> bool:
        return False  # the end of TLS, not a half-close (that is a zero frame): closes

    def connection_lost(self, exc: BaseException | None) -> None:
        self.pipe.link.open_conns -= 1
        super().connection_lost(exc)


class Pipe:
    """Two Ends joined: `near`, the connection accepted; `far`, the one this proxy makes.

    Outbound, near is the client's socket and far the stream (or framed
    connection) to the peer proxy; inbound, near is the peer's stream and far
    the app's socket. Reading is held on near until far is there. Both
    directions half-closed: both close. One end lost before that: the other is
    reset, as a TCP connection would be.
    """

    def __init__(self, rt: Runtime, side: str, source: str, destination: str) -> None:
        self.rt = rt
        self.side = side
        self.source = source
        self.destination = destination
        self.key = (side, source, destination)
        self.link = rt.stats.tcp_link(side, source, destination)
        self.near: End | None = None
        self.far: End | None = None
        self.opened = False  # counted as an open connection of the link
        self.closing = False

    def other(self, end: End) -> End | None:
        return self.far if end is self.near else self.near

    def made(self, end: End) -> None:
        if end is self.near and self.far is None:
            self.opened = True
            self.link.tcp_conns += 1
            self.rt.stats.tcp_opened(self.key, 1)
            end.transport.pause_reading()
            self.rt.spawn(self.connect())

    async def connect(self) -> None:
        raise NotImplementedError

    def join(self) -> None:
        near, far = self.near, self.far
        assert near is not None and far is not None
        near.out = far.writer()
        far.out = near.writer()
        # Reading resumed first: flushing may fill a window and pause it again, which must hold.
        near.transport.resume_reading()
        far.transport.resume_reading()
        near.flush_early()
        far.flush_early()  # e.g. an app's greeting, read while its connection was being made

    def fin(self, end: End) -> None:
        end.eof = True
        if end.out is not None:
            end.out.write_eof()
        other = self.other(end)
        if other is not None and other.eof:
            self.close()

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        for e in (self.near, self.far):
            if e is not None and e.transport is not None and not e.lost:
                e.transport.close()

    def lost(self, end: End) -> None:
        if end is self.near and self.opened:
            self.rt.stats.tcp_opened(self.key, -1)
        if self.closing:
            return
        self.closing = True
        other = self.other(end)
        if other is not None:
            other.abort("reset")

    def fail(self, reason: str, message: str) -> None:
        """Nothing could be delivered: counted, logged (rate-limited), and the caller's connection reset."""
        self.rt.stats.tcp_failure(self.side, self.source, self.destination, reason)
        log_limited(self.side, self.destination, reason,
                    f"{self.source} -> {self.destination} ({self.side}): {message}; the caller's connection is reset")
        self.closing = True
        if self.near is not None:
            self.near.abort(reason)


# Reasons a peer proxy resets a tcp stream with when it could not reach an instance.
DELIVERY_REASONS = frozenset({"connect_refused", "connect_timeout", "no_instances"})


class OutboundPipe(Pipe):
    def __init__(self, rt: Runtime, source: str, destination: str) -> None:
        super().__init__(rt, "outbound", source, destination)

    def made(self, end: End) -> None:
        if end is self.near:
            stats = self.rt.stats
            stats.client_conns += 1
            b = self.rt.local_budget  # tcp-link clients are local apps: their budget, not peers'
            b.count += 1
            if b.count > b.limit:
                stats.error("outbound", "overloaded", self.source, self.destination)
                self.closing = True
                end.abort("overloaded")
                return
        super().made(end)

    def lost(self, end: End) -> None:
        if end is self.near:
            self.rt.stats.client_conns -= 1
            self.rt.local_budget.count -= 1
        elif not self.closing and end.n == 0 and not end.eof:
            # Gone before a byte came back: the far proxy could not deliver. It says why when it
            # resets a stream; an older proxy (glassmesh-tcp/1) just closes.
            reason = end.transport.reset_reason if end.kind == "stream" else "upstream_reset"
            if reason in DELIVERY_REASONS or end.kind == "framed":
                self.fail(reason, f"the peer proxy could not deliver it ({reason})")
                return
        super().lost(end)

    async def connect(self) -> None:
        rt = self.rt
        remote = rt.table.remotes.get(self.destination)
        n = len(remote.endpoints.items) if remote is not None else 0
        reason, message = "no_endpoints", f"service {self.destination!r} has no endpoints"
        for _ in range(min(3, n)):
            assert remote is not None
            h, p, _, mesh = remote.endpoints.pick()
            if not mesh:
                reason, message = "not_implemented", "tcp links to instances found in DNS are not implemented"
                continue
            key = PoolKey(h, p, self.source, self.destination)
            try:
                if rt.table.mux and await self._stream(key):
                    return
                if self.closing:
                    return
                await self._framed(key)
                return
            except ConnectError as e:
                rt.stats.error("outbound", e.reason, self.source, self.destination)
                reason, message = e.reason, str(e)
            if self.closing:
                return
        if not self.closing:
            self.fail(reason, message)

    async def _stream(self, key: PoolKey) -> bool:
        """A stream of the link's multiplexed connection; False when the peer does not take tcp streams."""
        conn = await self.rt.pool(key, self.link).mux_connection()
        if not conn.settings_seen:
            try:
                async with asyncio.timeout(self.rt.timeouts.connect_ms / 1000):
                    await conn.settled()
            except TimeoutError:
                return False
        if self.closing:
            return True
        if not conn.peer_tcp or not conn.usable():
            return False
        far = self.far = End(self, toward_app=False, kind="stream")
        conn.open(lambda: far, tcp=True)
        self.join()
        return True

    async def _framed(self, key: PoolKey) -> None:
        """A TLS connection of its own (glassmesh-tcp/1), for peers without tcp streams."""
        t = self.rt.table
        pool = Pool(key, t.client_ctx_tcp[self.source], t.expected_peer(self.destination), self.link,
                    self.rt.timeouts.connect_ms / 1000)
        far = self.far = FramedEnd(self, toward_app=False)
        await pool.connect(lambda: far)
        if self.closing:
            far.transport.close()
            return
        self.join()


class InboundPipe(Pipe):
    def __init__(self, rt: Runtime, source: str, destination: str) -> None:
        super().__init__(rt, "inbound", source, destination)

    async def connect(self) -> None:
        rt = self.rt
        table = rt.table
        local = table.locals.get(self.destination)
        if local is not None and local.protocol != "tcp":
            # Raw bytes to an HTTP app would skip every header rule (a forged glassmesh-source with them).
            rt.stats.error("inbound", "not_a_tcp_service", self.source, self.destination)
            self.fail("not_a_tcp_service", f"{self.destination!r} is an http service: it takes no raw tcp")
            return
        if not table.authorized(self.source, self.destination):
            rt.stats.error("inbound", "forbidden", self.source, self.destination)
            self.fail("forbidden", f"{self.source!r} may not call {self.destination!r}")
            return
        n = len(local.instances.items) if local is not None else 0
        reason, message = "no_instances", f"{self.destination!r} has no instances here"
        loop = asyncio.get_running_loop()
        timeout = rt.timeouts.connect_ms / 1000
        for _ in range(min(3, n)):
            assert local is not None
            k = local.instances.pick()
            far = End(self, toward_app=False, kind="socket")
            try:
                async with asyncio.timeout(timeout):
                    await loop.create_connection(_factory(far), k.host, k.port)
            except TimeoutError:
                reason, message = "connect_timeout", f"no connection to {k.host}:{k.port} within {timeout:g}s"
            except OSError as e:
                reason, message = "connect_refused", f"cannot connect to {k.host}:{k.port}: {e.strerror or e}"
            else:
                self.far = far
                if self.closing:
                    far.transport.close()
                    return
                self.join()
                return
            rt.stats.error("inbound", reason, self.source, self.destination)
            if self.closing:
                return
        if not self.closing:
            self.fail(reason, message)


def _factory(end: End) -> Callable[[], End]:
    return lambda: end


class TcpLinkClient(End):
    """The local end of a tcp link: an app connected to the link's port."""

    def __init__(self, rt: Runtime, source: str, destination: str) -> None:
        pipe = OutboundPipe(rt, source, destination)
        super().__init__(pipe, toward_app=True, kind="socket")
        pipe.near = self


def inbound_tcp(rt: Runtime, source: str, destination: str, framed: bool) -> End:
    """The protocol for a tcp link arriving from a peer proxy: a stream, or a glassmesh-tcp/1 connection."""
    pipe = InboundPipe(rt, source, destination)
    near = FramedEnd(pipe, toward_app=True) if framed else End(pipe, toward_app=True, kind="stream")
    pipe.near = near
    return near
