"""TCP links: a byte pipe from a local port, over mutual TLS, to an instance of a service.

TLS through asyncio cannot half-close (there is no write_eof on a TLS
transport), yet databases and RPC protocols rely on "I am done sending, now
answer me". So the proxy-to-proxy leg carries frames: a 4-byte big-endian
length and that many bytes; a zero length means the sender shut down its
writing side. Each plain side maps its EOF to a zero frame and back.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING, Any

from glassmesh.proxy.pool import ConnectError, Pool
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
    """Joins a plain side and a framed (TLS) side; closes both once both directions are done."""

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
        for s in (self.plain, self.framed):
            if s is not None and s.transport is not None:
                s.transport.close()


class PlainSide(asyncio.Protocol):
    def __init__(self, relay: Relay, outbound: bool, ready: bool = True) -> None:
        self.relay = relay
        self.transport: Any = None
        self.outbound = outbound
        self.pending: list[bytes] = []
        self.ready = ready  # False until the framed side exists and has our pending bytes

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.relay.plain = self

    def data_received(self, data: bytes) -> None:
        r = self.relay
        f = r.framed
        if r.link is not None:
            if self.outbound:
                r.link.bytes_req += len(data)
            else:
                r.link.bytes_resp += len(data)
        if not self.ready:
            self.pending.append(data)
            return
        f.transport.writelines(encode(data))

    def eof_received(self) -> bool:
        r = self.relay
        r.plain_done = True
        if self.ready:
            r.framed.transport.write(FIN)
        else:
            self.pending.append(b"")
        r.maybe_close()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.relay.close()

    def pause_writing(self) -> None:
        f = self.relay.framed
        if f is not None and f.transport is not None:
            f.transport.pause_reading()

    def resume_writing(self) -> None:
        f = self.relay.framed
        if f is not None and f.transport is not None:
            f.transport.resume_reading()

    def flush_pending_to(self, framed: FramedSide) -> None:
        for d in self.pending:
            framed.transport.write(FIN if d == b"" else b"".join(encode(d)))
        self.pending = []
        self.ready = True


class FramedSide(asyncio.Protocol):
    def __init__(self, relay: Relay, outbound: bool, ready: bool = True) -> None:
        self.relay = relay
        self.transport: Any = None
        self.decoder = FrameDecoder()
        self.outbound = outbound
        self.pending: list[bytes | None] = []
        self.ready = ready  # False until the plain side is connected and has our pending frames

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        self.relay.framed = self
        if self.relay.link is not None:
            self.relay.link.open_conns += 1

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ValueError:
            self.relay.close()
            return
        if not self.ready:
            self.pending += frames
            return
        self._deliver(frames, self.relay.plain)

    def _deliver(self, frames: list[bytes | None], p: PlainSide) -> None:
        r = self.relay
        link = r.link
        for fr in frames:
            if fr is None:
                r.framed_done = True
                if p.transport.can_write_eof():
                    p.transport.write_eof()
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
                p.transport.write(fr)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.relay.link is not None:
            self.relay.link.open_conns -= 1
        self.relay.close()

    def pause_writing(self) -> None:
        p = self.relay.plain
        if p is not None and p.transport is not None:
            p.transport.pause_reading()

    def resume_writing(self) -> None:
        p = self.relay.plain
        if p is not None and p.transport is not None:
            p.transport.resume_reading()


class TcpLinkClient(PlainSide):
    """The local end of a tcp link: an app connected to the link's port."""

    def __init__(self, rt: Runtime, source: str, destination: str) -> None:
        super().__init__(Relay(rt.stats.link("outbound", source, destination)), outbound=True, ready=False)
        self.rt = rt
        self.source = source
        self.destination = destination

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.relay.link.tcp_conns += 1
        transport.pause_reading()
        self.rt.spawn(self._connect())

    async def _connect(self) -> None:
        rt = self.rt
        remote = rt.table.remotes.get(self.destination)
        eps = list(remote.endpoints.items) if remote else []
        tried = 0
        while tried < min(3, len(eps)):
            tried += 1
            h, p, _, mesh = remote.endpoints.pick()
            if not mesh:
                rt.stats.error("outbound", "not_implemented")  # tcp links to DNS instances: not yet
                continue
            key = PoolKey(h, p, self.source, self.destination)
            pool = Pool(key, rt.table.client_ctx_tcp[self.source], rt.table.expected_peer(self.destination),
                        self.relay.link, rt.timeouts.connect_ms / 1000)
            try:
                await pool.connect(lambda: FramedSide(self.relay, outbound=True))
            except ConnectError as e:
                rt.stats.error("outbound", e.reason)
                continue
            if self.relay.closed:
                self.relay.close()
                return
            self.flush_pending_to(self.relay.framed)
            self.transport.resume_reading()
            return
        rt.stats.error("outbound", "no_endpoints" if not eps else "connect_failed")
        self.transport.abort()


class InboundTcp(FramedSide):
    """The inbound end of a tcp link: frames from a peer proxy to a local instance."""

    def __init__(self, rt: Runtime, source: str, destination: str) -> None:
        super().__init__(Relay(rt.stats.link("inbound", source, destination)), outbound=False, ready=False)
        self.rt = rt
        self.destination = destination

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.relay.link.tcp_conns += 1
        self.relay.link.handshakes += 1
        transport.pause_reading()
        self.rt.spawn(self._connect())

    async def _connect(self) -> None:
        rt = self.rt
        local = rt.table.locals.get(self.destination)
        n = len(local.instances.items) if local else 0
        for _ in range(min(3, n)):
            key = local.instances.pick()
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(rt.timeouts.connect_ms / 1000):
                    await loop.create_connection(lambda: PlainSide(self.relay, outbound=False), key.host, key.port)
            except (OSError, TimeoutError):
                rt.stats.error("inbound", "connect_refused")
                continue
            if self.relay.closed:
                self.relay.close()
                return
            frames, self.pending = self.pending, []
            self.ready = True
            self._deliver(frames, self.relay.plain)
            self.transport.resume_reading()
            return
        self.transport.abort()
