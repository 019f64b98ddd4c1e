"""Keep-alive pools of connections to the next hop, and the connect step.

One pool per PoolKey (address, calling identity, SNI). Idle connections are
reused last-in first-out, so that a burst leaves the fewest warm ones busy
and the rest age out. A connect runs as one task per new connection, never
per request.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from glassmesh.proxy.connector import ConnectError, Connector
from glassmesh.proxy.mux import MuxConnection, StreamUser
from glassmesh.proxy.routing import PoolKey

if TYPE_CHECKING:
    from glassmesh.proxy.linkstats import LinkStats

__all__ = ["ConnectError", "Pool", "PooledConn"]

_mono = time.monotonic  # a module global: time.monotonic is a lookup on the module besides


# Multiplexed links spread over a few TLS connections once busy when the peer has several
# workers (its SETTINGS frame says), so that each of them (the kernel hands them connections,
# not requests) takes load; toward a single worker one connection batches best (measured:
# 4 connections cost about 35% more CPU per request at 32 connections).
MUX_CONNS_MAX = 4
MUX_SPREAD_STREAMS = 8  # open another connection when the least busy one carries this many streams
MUX_STREAM_REQUESTS = 100  # a stream is closed after this many requests, so that streams move to new links


class PooledConn(StreamUser):
    """What a pool keeps: a connection that says whether it can carry another request.

    A base class here rather than the HTTP connection class itself, so that the
    pools do not import the request path that imports them (PooledConn in
    http.py is the one subclass); calls through it stay native (mypyc vtable).
    """

    idle_since = 0.0

    def rides_on(self, mux: MuxConnection) -> bool:
        """Whether this connection is a stream of `mux` (a method, not a shared attribute: see http.py)."""
        return False

    def reusable(self) -> bool:
        return False

    def close(self) -> None:
        pass


class Pool:
    def __init__(
        self,
        key: PoolKey,
        ssl_ctx: ssl.SSLContext | None,
        expected_peer: str | None,
        link: LinkStats | None,
        connect_timeout: float,
        mux: bool = False,
    ) -> None:
        self.key = key
        self.ssl_ctx = ssl_ctx
        self.expected_peer = expected_peer
        self.link = link
        self.connect_timeout = connect_timeout
        self.connector = Connector(key.host, key.port, key.sni, ssl_ctx, expected_peer, connect_timeout)
        # Typed, so that reusable() is a native call, not a method lookup by name.
        self.idle: list[PooledConn] = []
        self.closed = False
        self.mux = mux
        # Virtual connections are not proxy-to-proxy connections; the mux connections under them are.
        self.count_conns = not mux
        self.muxes: list[MuxConnection] = []
        self._growing: asyncio.Task[None] | None = None
        self._mux_waiters: list[asyncio.Future] | None = None

    def set_mux(self, mux: bool) -> None:
        if mux != self.mux:
            for c in self.idle:
                c.close()
            self.idle = []
            self.mux = mux
            self.count_conns = not mux

    def take(self) -> PooledConn | None:
        idle = self.idle
        while idle:
            c = idle.pop()
            if c.reusable():
                return c
        return None

    def put(self, conn: PooledConn) -> None:
        if self.closed:
            conn.close()
            return
        conn.idle_since = _mono()
        self.idle.append(conn)

    def discard(self, conn: PooledConn) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def sweep(self, now: float, max_idle: float) -> None:
        keep = []
        for c in self.idle:
            if now - c.idle_since > max_idle or not c.reusable():
                c.close()
            else:
                keep.append(c)
        self.idle = keep

    def close(self) -> None:
        self.closed = True
        for c in self.idle:
            c.close()
        self.idle = []
        for m in self.muxes:
            m.transport.close()

    async def mux_connection(self) -> MuxConnection:
        """The link's least busy multiplexed connection (or a new one), for a caller that opens its own stream."""
        return await self._mux_connection()

    async def _mux_connection(self) -> MuxConnection:
        best: MuxConnection | None = None
        for c in self.muxes:
            if c.usable() and (best is None or len(c.streams) < len(best.streams)):
                best = c
        if best is not None:
            # One connection grows the link at a time: the task starts on a later loop turn, and
            # every request of a burst read in this turn would otherwise start one of its own.
            if (len(best.streams) >= MUX_SPREAD_STREAMS and len(self.muxes) < self.mux_cap()
                    and self._mux_waiters is None and not self.closed
                    and (self._growing is None or self._growing.done())):
                self._growing = asyncio.get_running_loop().create_task(self._grow())
            return best
        if self._mux_waiters is not None:  # someone is connecting already: wait for theirs
            fut = asyncio.get_running_loop().create_future()
            self._mux_waiters.append(fut)
            return await fut
        return await self._new_mux()

    async def _new_mux(self) -> MuxConnection:
        waiters: list[asyncio.Future[MuxConnection]] = []
        self._mux_waiters = waiters
        try:
            _, conn = await self._connect(lambda: MuxConnection(on_lost=self._mux_lost, on_goaway=self._mux_goaway))
        except BaseException as e:
            for f in waiters:
                if not f.done():
                    f.set_exception(e)
            raise
        finally:
            self._mux_waiters = None
        self.muxes.append(conn)
        if self.link is not None:
            self.link.open_conns += 1
        for f in waiters:
            if not f.done():
                f.set_result(conn)
        return conn

    def reuses(self, used: int) -> bool:
        """Whether a connection that carried `used` requests goes back to the pool.

        A stream of a link that spreads retires after MUX_STREAM_REQUESTS, so that its
        successor opens on the least busy of the link's connections.
        """
        return not (self.mux and used >= MUX_STREAM_REQUESTS and self.mux_cap() > 1)

    def mux_cap(self) -> int:
        """How many connections this link may use: one, or two per peer worker up to MUX_CONNS_MAX."""
        peer = 1
        for c in self.muxes:  # a loop, not max() over a generator: this runs once per request
            if c.peer_workers > peer:
                peer = c.peer_workers
        return 1 if peer <= 1 else min(MUX_CONNS_MAX, 2 * peer)

    async def _grow(self) -> None:
        """One more connection for a busy link; new streams go to the least busy one."""
        try:
            conn = await self._new_mux()
        except BaseException:  # noqa: BLE001 - the link keeps the connections it has; a request never waits on this
            return
        if self.closed:  # the endpoint left the snapshot while we connected
            conn.transport.close()

    def _mux_goaway(self, conn: MuxConnection) -> None:
        """The peer drains (GOAWAY): no request goes on `conn` again; those in flight finish.

        The connection is no longer usable (new streams open on another one, which
        reaches the proxy that replaced the peer on its port, or another endpoint);
        its idle streams are closed now, so that no kept-alive stream carries a new
        request there, and the connection closes with its last stream.
        """
        keep = []
        for c in self.idle:
            if c.rides_on(conn):
                c.close()
            else:
                keep.append(c)
        self.idle = keep

    def _mux_lost(self, conn: MuxConnection) -> None:
        if conn in self.muxes:
            self.muxes.remove(conn)
            if self.link is not None:
                self.link.open_conns -= 1

    async def connect(self, factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
        """Open one connection (a stream, when multiplexed); raises ConnectError with a reason code."""
        if self.mux:
            conn = await self._mux_connection()
            return conn.open(factory)
        return await self._connect(factory)

    async def _connect(self, factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
        c = self.connector
        c.ssl_ctx = self.ssl_ctx  # a new snapshot may have replaced the certificates
        c.timeout_s = self.connect_timeout
        tr, proto = await c.connect(factory)
        if self.ssl_ctx is not None and self.link is not None:
            self.link.handshakes += 1
            self.link.tls_version = tr.get_extra_info("ssl_object").version() or "TLS"
        return tr, proto
