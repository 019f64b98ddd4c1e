"""The two HTTP sides of a proxy: what each adds to a request and where it sends it.

Outbound: a local app calls a service by name; the request goes to one of
the service's endpoints (a peer proxy's inbound port) over mutual TLS with
the calling service's certificate. Inbound: a peer proxy, already
authenticated by the TLS handshake, delivers a request for a local service;
it goes to a local instance, with the caller's identity attached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glassmesh.protocols.http1 import (
    HOP_BY_HOP,
    SOURCE_HEADER,
    TRAIL_HEADER,
    BadMessage,
    service_of,
    split_target,
)
from glassmesh.proxy.http import Exchange, Routed, Side
from glassmesh.proxy.routing import Live, PoolKey, Remote

if TYPE_CHECKING:
    from glassmesh.proxy.linkstats import LinkStats
    from glassmesh.proxy.runtime import Runtime

_MESH_HEADERS = frozenset((SOURCE_HEADER, TRAIL_HEADER))


class OutboundSide(Side):
    name = "outbound"
    name_b = b"outbound"
    drop = HOP_BY_HOP | _MESH_HEADERS
    trust_trail = True

    def __init__(self, rt: Runtime, source: str) -> None:
        self.rt = rt
        self.budget = rt.local_budget
        self.live: Live = rt.live  # the table in force, read natively (rt is not compiled)
        self.source = source
        self._cache: dict[tuple[str, int, str], Routed] = {}
        self._gen = -1
        # The services this source may call (the table's own dict when it may call every one).
        self._remotes: dict[str, Remote] = {}
        # authority -> service name, bounded: parsing and decoding it cost ~1,700 instructions per request.
        self._services: dict[bytes, str] = {}

    def link_for(self, service: str | None) -> LinkStats:
        return self.rt.stats.link("outbound", self.source, service or "")

    def route(self, ex: Exchange) -> Routed | tuple[str, str]:
        head = ex.head
        assert head is not None
        host = head.host
        try:
            authority, path = split_target(ex.method, ex.url, host)
        except BadMessage as e:
            return ("bad_request", str(e))
        services = self._services
        svc = services.get(authority)
        if svc is None:
            svc = service_of(authority)
            if len(services) < 256 and len(authority) <= 255:
                services[authority] = svc
        ex.service = svc
        if self._gen != self.live.generation:
            self._renew()
        remote = self._remotes.get(svc)
        if remote is None:
            return self._unroutable(svc)
        if remote.protocol != "http":
            return ("bad_request", f"{svc!r} is a tcp service; reach it through its tcp link")
        ep = remote.endpoints.pick()
        if ep is None:
            return ("no_endpoints", f"service {svc!r} has no endpoints")
        if ex.url is not path:
            ex.url = path
            if host != authority:
                head.set_host(authority)
        return self._routed(svc, ep)

    def _renew(self) -> None:
        """A new table is in force: forget its predecessor's routes, take this source's services from it."""
        live = self.live
        self._gen = live.generation
        self._cache = {}
        table = live.table
        local = table.locals.get(self.source)
        calls = local.calls if local is not None else None
        remotes = table.remotes
        self._remotes = remotes if calls is None else {n: remotes[n] for n in calls if n in remotes}

    def _unroutable(self, svc: str) -> tuple[str, str]:
        """Why a call to svc has nowhere to go: not allowed for this caller, or not in the mesh."""
        table = self.live.table
        local = table.locals.get(self.source)
        calls = local.calls if local is not None else None
        if calls is not None and (svc in table.remotes or svc in table.withheld):
            return ("call_not_allowed", f"{self.source!r} may not call {svc!r} (calls: [{', '.join(calls)}])")
        return ("unknown_service", f"no service named {svc!r} is known to {self.rt.host}")

    def reroute(self, ex: Exchange, tried: set[tuple[str, int]]) -> Routed | None:
        """Another endpoint of the same service, after a connect failure or a reset."""
        svc = ex.service
        if self._gen != self.live.generation:
            self._renew()
        remote = self._remotes.get(svc) if svc is not None else None
        if svc is None or remote is None:
            return None
        for _ in range(len(remote.endpoints.items)):
            ep = remote.endpoints.pick()
            if ep is not None and (ep[0], ep[1]) not in tried:
                return self._routed(svc, ep)
        return None

    def _routed(self, svc: str, ep: tuple[str, int, str, bool]) -> Routed:
        rt = self.rt
        key = (ep[0], ep[1], svc)
        r = self._cache.get(key)
        if r is None:
            link = self.link_for(svc)
            # A mesh endpoint is a peer proxy (mTLS as this source, SNI = service); one
            # found by DNS is the instance itself, reached in plain HTTP.
            pk = PoolKey(ep[0], ep[1], self.source, svc) if ep[3] else PoolKey(ep[0], ep[1], None, None)
            r = self._cache[key] = Routed(rt.pool(pk, link), link, svc, [])
        return r


class InboundSide(Side):
    name = "inbound"
    name_b = b"inbound"
    drop = HOP_BY_HOP | _MESH_HEADERS
    trust_trail = False

    def __init__(self, rt: Runtime, source: str, source_id: str, destination: str) -> None:
        self.rt = rt
        self.budget = rt.peer_budget(source)  # apart from local apps', and from other peers'
        self.live: Live = rt.live
        self.source = source
        self.destination = destination
        self.extra = [SOURCE_HEADER + b": " + source_id.encode()]
        self.link = rt.stats.link("inbound", source, destination)
        self._cache: dict[PoolKey, Routed] = {}
        self._gen = self.live.generation
        # The authorize step, decided once per table (caller and callee are fixed per connection).
        self._allowed = self.live.table.authorized(source, destination)

    def link_for(self, service: str | None) -> LinkStats:
        return self.link

    def route(self, ex: Exchange) -> Routed | tuple[str, str]:
        live = self.live
        ex.service = self.destination
        gen = live.generation
        if self._gen != gen:
            self._cache = {}
            self._gen = gen
            self._allowed = live.table.authorized(self.source, self.destination)
        if not self._allowed:
            return ("forbidden", f"{self.source!r} may not call {self.destination!r} (its callers are set in "
                                 f"mesh.yaml by each service's calls:)")
        local = live.table.locals.get(self.destination)
        if local is None:
            return ("misdirected", f"{self.rt.host} no longer serves {self.destination!r}")
        key = local.instances.pick()
        if key is None:
            return ("no_endpoints", f"{self.rt.host} has no instance of {self.destination!r}")
        r = self._cache.get(key)
        if r is None:
            r = self._cache[key] = Routed(self.rt.pool(key, None), self.link, self.destination, self.extra)
        return r

    def reroute(self, ex: Exchange, tried: set[tuple[str, int]]) -> Routed | None:
        local = self.live.table.locals.get(self.destination)
        if local is None:
            return None
        for _ in range(len(local.instances.items)):
            key = local.instances.pick()
            if key is not None and (key.host, key.port) not in tried:
                return Routed(self.rt.pool(key, None), self.link, self.destination, self.extra)
        return None
