"""Route matching for one destination service, and compile_policy: a service's whole policy, built once.

Routes are tried in order, first match wins; a request no route takes goes
the default route (b"default": every endpoint, no retry rule, no timeout, no
fault). Matching is on the path without its query string.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from glassmesh.model.snapshot import Policy, Route, Service, split_address
from glassmesh.proxy.stages.balance import Balancer, RoundRobinBalancer
from glassmesh.proxy.stages.eject import Outlier
from glassmesh.proxy.stages.endpoint import DEFAULT_EWMA_S, EndpointState
from glassmesh.proxy.stages.fault import FaultStage
from glassmesh.proxy.stages.mirror import MirrorStage
from glassmesh.proxy.stages.overload import Limits
from glassmesh.proxy.stages.retry import RetryBudget, RetryPolicy
from glassmesh.proxy.stages.split import Split

DEFAULT_POLICY = Policy()


class CompiledRoute:
    def __init__(self, name: bytes, split: Split, timeout_s: float = 0.0, idle_timeout_s: float = 0.0,
                 retry: RetryPolicy | None = None, fault: FaultStage | None = None,
                 mirror: MirrorStage | None = None) -> None:
        self.name = name
        self.split = split
        self.timeout_s = timeout_s  # whole request, head in to response end; 0: none
        self.idle_timeout_s = idle_timeout_s  # longest gap between bytes of the response; 0: none
        self.retry = retry
        self.fault = fault
        self.mirror = mirror
        # The match, compiled (see RouteTable.match); set by compile_policy. Cheapest test first:
        # most routes differ by path, and a request's method is a new bytes object each time, whose
        # hash (for a set) cost 100 instructions per route where a comparison costs 15.
        self.prefix = b""  # b"": any path
        self.exact: bytes | None = None
        self.regex: re.Pattern[bytes] | None = None
        self.methods: list[bytes] = []  # []: any method
        self.headers: list[tuple[bytes, bytes]] = []
        # A route that matches on a path prefix alone (the usual kind): matched with one startswith.
        self.prefix_only = False

    def matches(self, method: bytes, path: bytes, header: Callable[[bytes], bytes | None]) -> bool:
        if not path.startswith(self.prefix):
            return False
        if self.exact is not None and path != self.exact:
            return False
        methods = self.methods
        if methods:
            for m in methods:
                if m == method:
                    break
            else:
                return False
        if self.regex is not None and self.regex.match(path) is None:
            return False
        for name, value in self.headers:
            if header(name) != value:
                return False
        return True


class RouteTable:
    def __init__(self, routes: list[CompiledRoute], default: CompiledRoute) -> None:
        self.routes = routes
        self.default = default
        # Only exact and regex matches need the path without its query string: a prefix (which has
        # no '?') starts the path with its query iff it starts the path without. bytes.find cost
        # 950 instructions a request (a method call, its arguments parsed), so it is left out when it can be.
        self.bare = any(r.exact is not None or r.regex is not None for r in routes)

    def match(self, method: bytes, path: bytes, header: Callable[[bytes], bytes | None]) -> CompiledRoute:
        """The first route that takes this request, else the default route.

        header(name) gives a request header's value by lowercase name (None if absent).
        """
        routes = self.routes
        if not routes:
            return self.default
        if self.bare:
            q = path.find(b"?")  # (not `b"?" in path`: bytes.__contains__ tries the int form first, and
            if q >= 0:           # raising and clearing that TypeError cost 1,700 instructions a request)
                path = path[:q]
        for r in routes:
            if r.prefix_only:  # (a bool attribute: the truth of bytes is a generic call, 26 instructions)
                if path.startswith(r.prefix):
                    return r
            elif r.matches(method, path, header):
                return r
        return self.default


def compile_policy(svc: Service, old: dict[tuple[str, int], EndpointState], now: float,
                   old_budget: RetryBudget | None = None, old_limits: Limits | None = None,
                   ) -> tuple[RouteTable, list[EndpointState], RetryBudget, Limits]:
    """Everything one service needs, built once per snapshot.

    old: the service's endpoints under the previous snapshot, by (host, port):
    those still present are kept (latency, load and ejections carry over).
    old_budget, old_limits: kept likewise, with the new parameters.
    A service without a policy gets Policy(): P2C, outlier detection, no routes.
    """
    pol = svc.policy if svc.policy is not None else DEFAULT_POLICY
    eps: list[EndpointState] = []
    fresh: list[EndpointState] = []
    made: dict[tuple[str, int], EndpointState] = {}
    for e in svc.endpoints:
        host, port = split_address(e.address)
        # Two instances on one host are two endpoints with its one address: one state, listed twice
        # (twice as likely to be drawn, as round robin gave it twice the turns).
        ep = made.get((host, port)) or old.get((host, port))
        if ep is None:
            ep = EndpointState(host, port, e.host, e.mesh, e.labels, DEFAULT_EWMA_S, now)
            fresh.append(ep)
        else:
            ep.host_name = e.host
            ep.mesh = e.mesh
            ep.labels = e.labels
        made[ep.key] = ep
        eps.append(ep)
    if fresh:
        # A new endpoint starts at half the lowest estimate of the others: the next requests try it
        # (the requests it has in flight weigh against it, so it is not flooded) and its own answers
        # then set its estimate. At the median it could wait seconds: the others' peak estimates
        # rise at once on one slow answer, and the one it copied at such a moment then decayed
        # below it while it, unmeasured, kept it (a new instance got nothing for ~3 s).
        new = {ep.key for ep in fresh}  # (a set: `ep not in fresh` was quadratic in a big service)
        known = [ep.ewma_s for ep in eps if ep.key not in new]
        if known:
            start = min(known) / 2
            for ep in fresh:
                ep.ewma_s = start
    o = pol.outlier
    outlier = (Outlier(eps, o.consecutive_failures, o.base_ejection_ms / 1000, o.max_ejection_ms / 1000,
                       o.max_ejection_percent) if o is not None else None)
    for ep in eps:
        ep.outlier = outlier

    def balancer(members: list[EndpointState]) -> Balancer:
        return RoundRobinBalancer(members) if pol.balance == "round_robin" else Balancer(members)

    everyone = balancer(eps)
    subsets: dict[str, Balancer] = {}
    for sub in pol.subsets:
        want = sub.labels.items()
        subsets[sub.name] = balancer([ep for ep in eps if want <= ep.labels.items()])
    routes = [_route(r, subsets, everyone) for r in pol.routes]
    default = CompiledRoute(b"default", Split([(b"", everyone, 1)]))
    budget = old_budget if old_budget is not None else RetryBudget(pol.retry_budget.percent,
                                                                   pol.retry_budget.min_per_second)
    budget.set(pol.retry_budget.percent, pol.retry_budget.min_per_second)
    lim = pol.limits
    limits = old_limits if old_limits is not None else Limits()
    limits.set(lim.max_connections, lim.max_pending, lim.max_requests)
    return RouteTable(routes, default), eps, budget, limits


def _route(r: Route, subsets: dict[str, Balancer], everyone: Balancer) -> CompiledRoute:
    # A subset with no endpoint is left out of a split that has others, so that a canary whose
    # instances are gone costs no failed requests; a route whose every subset is empty keeps
    # them, and its requests fail with no_endpoints, as the operator would expect.
    backends = [(b.subset.encode(), subsets[b.subset], b.weight) for b in r.split if b.weight > 0]
    live = [b for b in backends if b[1].endpoints]
    split = Split(live or backends or [(b"", everyone, 1)])
    retry = RetryPolicy(r.retry.attempts, r.retry.on_status, r.retry.connect_failures) if r.retry else None
    f = r.fault
    fault = (FaultStage(f.delay_ms / 1000, f.delay_percent, f.abort_status or 0, f.abort_percent)
             if f is not None and (f.delay_percent > 0 or f.abort_percent > 0) else None)
    m = r.mirror
    mirror = MirrorStage(m.subset.encode(), subsets[m.subset], m.percent) if m is not None else None
    cr = CompiledRoute(r.name.encode(), split, (r.timeout_ms or 0) / 1000, (r.idle_timeout_ms or 0) / 1000,
                       retry, fault, mirror)
    mt = r.match
    cr.prefix = mt.path_prefix.encode() if mt.path_prefix is not None else b""
    cr.exact = mt.path_exact.encode() if mt.path_exact is not None else None
    cr.regex = re.compile(mt.path_regex.encode()) if mt.path_regex is not None else None
    cr.methods = sorted({m_.upper().encode() for m_ in mt.methods})
    cr.headers = [(k.lower().encode(), v.encode()) for k, v in mt.headers.items()]
    cr.prefix_only = cr.exact is None and cr.regex is None and not cr.methods and not cr.headers
    return cr
