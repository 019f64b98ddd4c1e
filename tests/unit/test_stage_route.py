"""Routes and splits, driven without sockets: first match wins, and a 1% canary gets 1%."""

from __future__ import annotations

import math
import random

from glassmesh.model.snapshot import (
    Backend,
    Endpoint,
    Fault,
    Mirror,
    Policy,
    Retry,
    RetryBudget,
    Route,
    RouteMatch,
    Service,
    ServiceLimits,
    Subset,
)
from glassmesh.proxy.stages.balance import Balancer, RoundRobinBalancer
from glassmesh.proxy.stages.route import compile_policy
from glassmesh.proxy.stages.split import Split


def svc(routes: list[Route], v2: bool = True, **kw) -> Service:  # type: ignore[no-untyped-def]
    eps = [Endpoint(address="127.0.0.1:1", host="h1", labels={"version": "v1"}),
           Endpoint(address="127.0.0.1:2", host="h2", labels={"version": "v1", "zone": "a"})]
    if v2:
        eps.append(Endpoint(address="127.0.0.1:3", host="h3", labels={"version": "v2"}))
    subsets = [Subset(name="v1", labels={"version": "v1"}), Subset(name="v2", labels={"version": "v2"})]
    return Service(name="b", endpoints=eps, policy=Policy(subsets=subsets, routes=routes, **kw))


def no_header(name: bytes) -> bytes | None:
    return None


def test_one_percent_is_one_percent_within_four_sigma() -> None:
    random.seed(11)
    split = Split([(b"v1", Balancer([]), 99), (b"v2", Balancer([]), 1)])
    n = 100_000
    got = sum(1 for _ in range(n) if split.pick()[0] == b"v2")
    sigma = math.sqrt(n * 0.01 * 0.99)
    assert abs(got - n * 0.01) <= 4 * sigma, got
    three = Split([(b"a", Balancer([]), 1), (b"b", Balancer([]), 2), (b"c", Balancer([]), 7)])
    counts = {b"a": 0, b"b": 0, b"c": 0}
    for _ in range(n):
        counts[three.pick()[0]] += 1
    for name, share in ((b"a", 0.1), (b"b", 0.2), (b"c", 0.7)):
        assert abs(counts[name] - n * share) <= 4 * math.sqrt(n * share * (1 - share)), counts


def test_first_matching_route_wins_and_the_rest_go_to_the_default() -> None:
    routes = [
        Route(name="exact", match=RouteMatch(path_exact="/health")),
        Route(name="beta", match=RouteMatch(path_prefix="/api", headers={"x-user": "beta"}),
              split=[Backend(subset="v2", weight=1)]),
        Route(name="writes", match=RouteMatch(path_prefix="/api", methods=["POST", "PUT"])),
        Route(name="items", match=RouteMatch(path_regex="/api/items/[0-9]+$")),
        Route(name="api", match=RouteMatch(path_prefix="/api")),
    ]
    table = compile_policy(svc(routes), {}, 0.0)[0]
    beta = {b"x-user": b"beta"}.get

    def name(method: bytes, path: bytes, header=no_header) -> bytes:  # type: ignore[no-untyped-def]
        return table.match(method, path, header).name

    assert name(b"GET", b"/health") == b"exact"
    assert name(b"GET", b"/health?full=1") == b"exact"  # the query string is not part of the path
    assert name(b"GET", b"/api/items/12?x=1") == b"items"
    assert name(b"PUT", b"/api?/x") == b"writes"  # a prefix that the path has before its query only
    assert name(b"PUT", b"/ap?i/x") == b"default"
    assert name(b"GET", b"/healthz") == b"default"
    assert name(b"GET", b"/api/x", beta) == b"beta"
    assert name(b"POST", b"/api/x") == b"writes"
    assert name(b"GET", b"/api/items/12") == b"items"
    assert name(b"GET", b"/api/items/12/parts") == b"api"
    assert name(b"GET", b"/other") == b"default"
    r = table.match(b"GET", b"/api/x", beta)
    subset, bal = r.split.pick()
    assert subset == b"v2" and [e.port for e in bal.endpoints] == [3]
    d = table.match(b"GET", b"/", no_header)
    assert d.timeout_s == 0.0 and d.retry is None and len(d.split.pick()[1].endpoints) == 3


def test_route_settings_compile_and_an_empty_subset_leaves_the_split() -> None:
    route = Route(name="canary", split=[Backend(subset="v1", weight=99), Backend(subset="v2", weight=1)],
                  timeout_ms=1500, idle_timeout_ms=200, retry=Retry(attempts=3, on_status=[503]),
                  fault=Fault(delay_ms=50, delay_percent=10.0), mirror=Mirror(subset="v2", percent=5.0))
    table, _, budget, limits = compile_policy(svc([route], retry_budget=RetryBudget(percent=5.0),
                                                  limits=ServiceLimits(max_requests=7), balance="round_robin"),
                                              {}, 0.0)
    r = table.routes[0]
    assert (r.timeout_s, r.idle_timeout_s, r.retry.attempts) == (1.5, 0.2, 3)  # type: ignore[union-attr]
    assert r.fault is not None and r.fault.delay_s == 0.05 and r.mirror is not None
    assert isinstance(r.split.pick()[1], RoundRobinBalancer)
    assert budget.ratio == 0.05 and limits.max_requests == 7
    # v2's instances are gone: its 1% goes to v1 rather than failing.
    table = compile_policy(svc([route], v2=False), {}, 0.0)[0]
    assert {table.routes[0].split.pick()[0] for _ in range(500)} == {b"v1"}
    assert table.routes[0].mirror.pick() is None  # type: ignore[union-attr]
    # Every subset of the route empty: its balancer has none, and the proxy answers no_endpoints.
    only_v2 = Route(name="v2only", split=[Backend(subset="v2", weight=1)])
    table = compile_policy(svc([only_v2], v2=False), {}, 0.0)[0]
    assert table.routes[0].split.pick()[1].pick(0.0) is None


def test_prefix_routes_need_no_query_split_and_agree_with_it() -> None:
    routes = [Route(name=f"r{i}", match=RouteMatch(path_prefix=f"/api/v{i}/")) for i in range(5)]
    routes.append(Route(name="post", match=RouteMatch(path_prefix="/p", methods=["post"])))
    table = compile_policy(svc(routes), {}, 0.0)[0]
    assert not table.bare  # no exact or regex route: the query string is never cut off
    for path, want in ((b"/api/v3/x?y=/api/v1/", b"r3"), (b"/api/v3?/", b"default"), (b"/api/v1/", b"r1"),
                       (b"/?/api/v1/", b"default"), (b"/p?q", b"post")):
        assert table.match(b"POST", path, no_header).name == want, path
    assert table.match(b"GET", b"/p", no_header).name == b"default"  # methods compared case-blind at compile
