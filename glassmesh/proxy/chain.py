"""The stage chain of each side, compiled once per snapshot into the routing table.

The stages' logic is in glassmesh/proxy/stages/ (pure, one file each); this
module builds what one destination service needs from them, and names the
order in which the request path calls them, as direct calls:

Outbound (sides.OutboundSide.route picks; http.ServerConn sends; OutboundSide.retry decides again):
  1. route      stages/route.py     RouteTable.match: the first route whose match takes the request
  2. split      stages/split.py     Split.pick: the subset (and its balancer), by weight
  3. fault      stages/fault.py     FaultStage.decide: delay or abort a share (http.ServerConn._dispatch)
  4. overload   stages/overload.py  Limits.admit: a 503 naming the limit instead of a queue
  5. retry      stages/retry.py     RetryPolicy.may_retry + RetryBudget.try_spend (OutboundSide.retry)
  6. timeout    http.py             ExchangeTimer: the route's whole-request and idle timeouts
  7. balance    stages/balance.py   P2C over latency x load (or round robin), skipping ejected endpoints
     eject      stages/eject.py     Outlier: consecutive failures eject for a growing time
  8. endpoint   stages/endpoint.py  EndpointState.begin/end: load, latency EWMA, failures
     mirror     stages/mirror.py    MirrorStage.pick: a copy of a share of a route's requests (mirror.py)

Inbound (sides.InboundSide.route): authorize (Table.authorized, per connection) -> local route
(the SNI names the local service) -> balance (round robin over its instances) -> app.

When an exchange ends, http.ServerConn.exchange_done is the one place that tells the observers
(link stats, endpoint, limits, access log, then Runtime.observers).
"""

from __future__ import annotations

from glassmesh.model.snapshot import Service
from glassmesh.proxy.stages.endpoint import EndpointState
from glassmesh.proxy.stages.overload import Limits
from glassmesh.proxy.stages.retry import RetryBudget
from glassmesh.proxy.stages.route import RouteTable, compile_policy


class ServiceChain:
    """The outbound stages for one destination service, as one snapshot sets them.

    Endpoint states, the retry budget and the limits' counts are carried over
    from the previous snapshot's chain, so that a new snapshot forgets neither
    an endpoint's latency nor an ejection nor what is in flight.
    """

    def __init__(self, name: str, routes: RouteTable, endpoints: list[EndpointState], budget: RetryBudget,
                 limits: Limits) -> None:
        self.name = name
        self.routes = routes
        self.endpoints = endpoints
        self.budget = budget
        self.limits = limits
        # No routes: every request takes the default route, without a match call or a header lookup.
        self.plain = not routes.routes


def compile_chain(svc: Service, old: ServiceChain | None, now: float) -> ServiceChain:
    """The chain of one service, reusing what `old` (the same service under the previous snapshot) learned."""
    if old is None:
        routes, eps, budget, limits = compile_policy(svc, {}, now)
    else:
        prev = {ep.key: ep for ep in old.endpoints}
        routes, eps, budget, limits = compile_policy(svc, prev, now, old.budget, old.limits)
    return ServiceChain(svc.name, routes, eps, budget, limits)
