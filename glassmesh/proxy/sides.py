"""The two HTTP sides of a proxy: what each adds to a request and where it sends it.

Outbound: a local app calls a service by name; the request goes to one of
the service's endpoints (a peer proxy's inbound port) over mutual TLS with
the calling service's certificate. Inbound: a peer proxy, already
authenticated by the TLS handshake, delivers a request for a local service;
it goes to a local instance, with the caller's identity attached.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from glassmesh.protocols.http1 import (
    HOP_BY_HOP,
    SOURCE_HEADER,
    TRAIL_HEADER,
    BadMessage,
    Framing,
    service_of,
    split_target,
)
from glassmesh.proxy.http import (
    CONNECT_FAILED,
    MAX_TRIES,
    PEER_ERROR,
    REFUSED,
    RESET,
    RETRYABLE_AT_INBOUND,
    STATUS,
    Exchange,
    Routed,
    Side,
    bodiless,
    replayable,
)
from glassmesh.proxy.routing import Live, PoolKey, Remote

if TYPE_CHECKING:
    from glassmesh.proxy.chain import ServiceChain
    from glassmesh.proxy.linkstats import LinkStats
    from glassmesh.proxy.runtime import Runtime
    from glassmesh.proxy.stages.endpoint import EndpointState

_mono = time.monotonic
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
        """The outbound chain's first pass: route, split, fault, balance/eject, overload, endpoint (see chain.py)."""
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
        chain = remote.chain
        # 1. route
        route = chain.routes.default if chain.plain else chain.routes.match(
            ex.method, path, partial(header_of, head.forward))
        ex.route = route
        # 2. split
        subset, bal = route.split.pick()
        ex.subset = subset
        ex.balancer = bal
        # 3. fault
        fault = route.fault
        if fault is not None:
            delay, abort = fault.decide()
            if abort:
                ex.status_hint = abort
                return ("fault_abort", f"route {route.name.decode()!r} aborts {fault.abort_p * 100:g}% of "
                                       f"its requests with {abort}")
            ex.delay = delay
        # 7. balance / eject
        now = ex.conn.now
        ep = bal.pick(now, None)
        if ep is None:
            return ("no_endpoints", f"service {svc!r} has no endpoints" if not subset else
                    f"subset {subset.decode()!r} of service {svc!r} has no endpoints")
        # 4. overload
        refused = chain.limits.admit()
        if refused is not None:
            return (refused, f"service {svc!r} is at its {refused} limit ({_limit_of(chain, refused)})")
        ex.chain = chain
        chain.budget.request(now)  # 5. a first try adds to the retry budget
        # 8. endpoint
        ep.begin()
        ex.ep = ep
        mirror = route.mirror
        if mirror is not None and ex.framing == Framing.NONE and not ex.upgrade:
            mb = mirror.pick()
            mep = mb.pick(now, None) if mb is not None else None
            if mep is not None:
                ex.mirror = self._routed(svc, mep)
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

    def retry(self, ex: Exchange, cause: int, status: int, reason: bytes) -> Routed | None:
        """Whether and where a failed try goes again: the outbound side's one retry decision.

        cause (http.CONNECT_FAILED, RESET, PEER_ERROR, STATUS) says what failed; the route's retry rule
        (or, without one, today's failover: connect failures and a peer's safe errors, a reset once
        for an idempotent method), the try count, and the service's retry budget must all allow it.
        """
        ep = ex.ep
        route = ex.route
        chain = ex.chain
        bal = ex.balancer
        svc = ex.service
        if ep is None or route is None or chain is None or bal is None or svc is None:
            return None
        tried = ex.tried
        if tried is None:
            tried = ex.tried = set()
        tried.add(ep.key)
        pol = route.retry
        replay = False
        if cause == CONNECT_FAILED:
            ok = pol.connect_failures if pol is not None else True
        elif cause == RESET:
            ok = replay = replayable(ex)
        elif cause == REFUSED:  # http.unserved checked it: never seen by an app, all of it can be sent again
            ok = True
        elif cause == PEER_ERROR:
            after_reset = RETRYABLE_AT_INBOUND.get(reason)
            ok = after_reset is not None and bodiless(ex) and (not after_reset or replayable(ex))
            replay = after_reset is True
        else:
            ok = pol is not None and bodiless(ex) and pol.may_retry(ex.method, status, False, ex.body_sent)
        if not ok or ex.attempts >= (pol.attempts if pol is not None else MAX_TRIES):
            return None
        now = _mono()
        nxt = bal.pick(now, tried)
        if nxt is None:
            if cause != RESET and cause != REFUSED:
                return None
            # A kept-alive connection closed under the request, or a draining proxy refused it: a fresh
            # connection to the same endpoint (after a drain, the proxy that replaced it on the same port).
            nxt = ep
        # A refused stream reached no app: sending it again adds no load, so it spends no retry budget.
        if cause != REFUSED and not chain.budget.try_spend(now):
            self.rt.stats.retry("outbound", self.source, svc, "budget_exhausted")
            return None
        ep.end(False, now - (ex.sent_at or ex.t0), now)
        nxt.begin()
        ex.ep = nxt
        ex.attempts += 1
        if replay:
            ex.replays += 1
        self.rt.stats.retry("outbound", self.source, svc, _CAUSES[cause] if cause != PEER_ERROR else reason.decode())
        return self._routed(svc, nxt)

    def _routed(self, svc: str, ep: EndpointState) -> Routed:
        rt = self.rt
        key = (ep.host, ep.port, svc)
        r = self._cache.get(key)
        if r is None:
            link = self.link_for(svc)
            # A mesh endpoint is a peer proxy (mTLS as this source, SNI = service); one
            # found by DNS is the instance itself, reached in plain HTTP.
            pk = PoolKey(ep.host, ep.port, self.source, svc) if ep.mesh else PoolKey(ep.host, ep.port, None, None)
            r = self._cache[key] = Routed(rt.pool(pk, link), link, svc, [])
        return r


def header_of(forward: list[bytes], name: bytes) -> bytes | None:
    """A request header's value by lowercase name (the first one), for a route that matches on headers."""
    for i in range(0, len(forward) - 1, 2):
        if forward[i].lower() == name:
            return forward[i + 1]
    return None


def _limit_of(chain: ServiceChain, name: str) -> int:
    lim = chain.limits
    return lim.max_requests if name == "max_requests" else lim.max_pending if name == "max_pending" \
        else lim.max_connections


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
        self.extra = [SOURCE_HEADER, source_id.encode()]
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

    def retry(self, ex: Exchange, cause: int, status: int, reason: bytes) -> Routed | None:
        """The inbound side's one retry decision: another local instance after a connect failure, or a
        reset request replayed once (idempotent methods); never on a status (the caller's side decides that)."""
        r = ex.routed
        if r is None or cause == PEER_ERROR or cause == STATUS:
            return None
        key = r.pool.key
        tried = ex.tried
        if tried is None:
            tried = ex.tried = set()
        tried.add((key.host, key.port))
        if cause == RESET and not replayable(ex) or ex.attempts >= MAX_TRIES:
            return None
        nxt: Routed | None = None
        local = self.live.table.locals.get(self.destination)
        if local is not None:
            for _ in range(len(local.instances.items)):
                k = local.instances.pick()
                if k is not None and (k.host, k.port) not in tried:
                    nxt = Routed(self.rt.pool(k, None), self.link, self.destination, self.extra)
                    break
        if nxt is None:
            if cause != RESET:
                return None
            nxt = r
        if cause == RESET:
            ex.replays += 1
        ex.attempts += 1
        self.rt.stats.retry("inbound", self.source, self.destination, _CAUSES[cause])
        return nxt


_CAUSES = {CONNECT_FAILED: "connect_failure", RESET: "upstream_reset", PEER_ERROR: "peer_error", STATUS: "status",
           REFUSED: "refused_goaway"}
