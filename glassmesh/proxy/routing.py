"""The routing table compiled from a snapshot, and the pools it points at.

A Table is built whole from a Snapshot and never changed; swapping the
proxy's table is one assignment. Pools outlive tables, so that a new snapshot
with the same endpoints keeps its warm proxy-to-proxy connections.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import NamedTuple

from glassmesh.model.snapshot import Snapshot, split_address
from glassmesh.proxy.chain import ServiceChain, compile_chain
from glassmesh.proxy.roundrobin import RoundRobin
from glassmesh.proxy.tls import ALPN_MUX, ALPN_TCP, client_context, service_context


class PoolKey(NamedTuple):
    """Connections in one pool are interchangeable: same address, same identity, same SNI.

    A NamedTuple, not a frozen dataclass: it is hashed on the request path, and
    a dataclass's __hash__ runs in Python.
    """

    host: str
    port: int
    source: str | None  # local service whose certificate is presented; None = plain to an app
    sni: str | None


@dataclass
class Remote:
    """A service that a local service may call, as the outbound side sees it."""

    name: str
    protocol: str
    endpoints: RoundRobin  # of (ip, port, host name, through a mesh proxy?): what tcp links pick from
    chain: ServiceChain  # the outbound stages for HTTP requests (see chain.py)


@dataclass
class Local:
    """A local service as the inbound side sees it: where its instances listen."""

    name: str
    protocol: str
    instances: RoundRobin  # of PoolKey
    calls: list[str] | None = None  # what it may call, in its config's order; None: everything
    callers: frozenset[str] | None = None  # who may call it; None: every service of the mesh


@dataclass
class Table:
    version: int
    host: str
    trust_domain: str
    remotes: dict[str, Remote]
    locals: dict[str, Local]
    client_ctx: dict[str, ssl.SSLContext]  # by local (calling) service; offers the peer protocol's ALPN
    mux: bool
    client_ctx_tcp: dict[str, ssl.SSLContext]
    server_ctx: dict[str, ssl.SSLContext]  # inbound context by local service (SNI)
    withheld: frozenset[str] = frozenset()  # the mesh's services none of ours may call (names only)

    def expected_peer(self, service: str) -> str:
        return f"spiffe://{self.trust_domain}/service/{service}"

    def authorized(self, source: str, destination: str) -> bool:
        """The inbound authorize step: may `source` call local `destination` (HTTP or a tcp link)?

        A local service without a `callers` list takes every caller with a
        service identity of the trust domain (checked at the handshake), as a
        snapshot written by hand does; the control plane lists the callers of
        each service that not every service may call.
        """
        local = self.locals.get(destination)
        return local is None or local.callers is None or source in local.callers


class Live:
    """The table in force and its generation, shared by the runtime and the sides.

    The runtime is not compiled: reading the table and its generation from it on
    every request was two attribute lookups by name; the sides read this instead.
    The generation tells a side that its cache of routes is stale.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.generation = 1


def compile_table(snap: Snapshot, keylog: str | None = None, old: Table | None = None, now: float = 0.0) -> Table:
    """Build the table; raises TlsConfigError/OSError if certificates cannot be loaded.

    old: the table in force, whose services' endpoint states (latency, ejections), retry
    budgets and limits carry over; now: the clock the new endpoints' latency starts at.
    """
    alpn = ALPN_MUX if snap.peer_protocol == "mux" else "http/1.1"
    client_ctx = {
        ls.name: client_context(ls.cert, ls.key, snap.trust_bundle, keylog, alpn) for ls in snap.local_services
    }
    client_ctx_tcp = {
        ls.name: client_context(ls.cert, ls.key, snap.trust_bundle, keylog, ALPN_TCP) for ls in snap.local_services
    }
    server_ctx = {ls.name: service_context(ls.cert, ls.key, snap.trust_bundle, keylog) for ls in snap.local_services}
    remotes: dict[str, Remote] = {}
    for svc in snap.services:
        eps = []
        for ep in svc.endpoints:
            h, p = split_address(ep.address)
            eps.append((h, p, ep.host, ep.mesh))
        prev = old.remotes.get(svc.name) if old is not None else None
        chain = compile_chain(svc, prev.chain if prev is not None else None, now)
        remotes[svc.name] = Remote(svc.name, svc.protocol, RoundRobin(eps), chain)
    locals_: dict[str, Local] = {}
    for ls in snap.local_services:
        inst = [PoolKey(*split_address(a), None, None) for a in ls.instances]
        locals_[ls.name] = Local(ls.name, ls.protocol, RoundRobin(inst), ls.calls,
                                 frozenset(ls.callers) if ls.callers is not None else None)
    return Table(
        version=snap.version,
        host=snap.host,
        trust_domain=snap.trust_domain,
        remotes=remotes,
        locals=locals_,
        client_ctx=client_ctx,
        mux=snap.peer_protocol == "mux",
        client_ctx_tcp=client_ctx_tcp,
        server_ctx=server_ctx,
        withheld=frozenset(snap.withheld_services),
    )
