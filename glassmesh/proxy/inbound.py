"""The inbound port: after the mutual TLS handshake, hand the connection to HTTP or to a tcp link.

The handshake has already answered who is calling (client certificate),
which service is called (SNI) and what the connection carries (ALPN).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from glassmesh.protocols.errors import error_response
from glassmesh.proxy.http import ServerConn
from glassmesh.proxy.mux import MuxConnection
from glassmesh.proxy.sides import InboundSide
from glassmesh.proxy.tcp import inbound_tcp
from glassmesh.proxy.tls import ALPN_MUX, ALPN_TCP, peer_spiffe_id, service_of_spiffe

if TYPE_CHECKING:
    from glassmesh.proxy.runtime import Runtime


class InboundHandshake(asyncio.Protocol):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: Any = None  # kept so that a listener being removed can find its connections

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        rt = self.rt
        table = rt.table
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is None:
            transport.abort()
            return
        destination = getattr(sslobj, "glassmesh_service", None)
        peer = peer_spiffe_id(sslobj)
        source = service_of_spiffe(peer, table.trust_domain)
        alpn = sslobj.selected_alpn_protocol()
        if destination is None or source is None:
            # No label from an unknown caller's certificate or SNI: whatever it says is no label value.
            rt.stats.error("inbound", "forbidden")
            if alpn != ALPN_TCP:
                transport.write(error_response(
                    "forbidden", host=rt.host, side="inbound", close=True,
                    message=f"caller {peer or 'without a SPIFFE ID'} is not a service of "
                            f"{table.trust_domain}" if source is None else "no service named by SNI",
                ))
            transport.close()
            return
        local = table.locals.get(destination)
        if alpn == ALPN_TCP or (local is not None and local.protocol == "tcp"):
            link = rt.stats.tcp_link("inbound", source, destination)
        else:
            link = rt.stats.link("inbound", source, destination)
        link.handshakes += 1
        link.tls_version = sslobj.version() or "TLS"
        if alpn == ALPN_TCP:
            # An older peer: a TLS connection per tcp-link connection, framed (see tcp.py).
            proto: asyncio.Protocol = inbound_tcp(rt, source, destination, framed=True)
        elif alpn == ALPN_MUX:
            conns = rt.peer_connections(source)
            if not conns.take():
                # One caller's connections have a cap of their own: it cannot crowd out the others.
                rt.stats.error("inbound", "overloaded", source, destination)
                transport.abort()
                return
            link.open_conns += 1
            side = InboundSide(rt, source, peer, destination)

            def lost(conn: MuxConnection) -> None:
                link.open_conns -= 1
                conns.count -= 1
                rt.muxes.discard(conn)

            proto = MuxConnection(on_stream=lambda: ServerConn(rt, side), on_lost=lost, workers=rt.workers,
                                  on_tcp_stream=lambda: inbound_tcp(rt, source, destination, framed=False))
            rt.muxes.add(proto)
        else:
            proto = ServerConn(rt, InboundSide(rt, source, peer, destination), link)
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - replaced before any data
        pass
