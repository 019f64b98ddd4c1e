"""Balancing and ejection, driven without sockets: P2C over latency x load, and outlier detection."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from glassmesh.model.snapshot import Endpoint, Policy, Service
from glassmesh.model.snapshot import Outlier as OutlierConfig
from glassmesh.proxy.stages.balance import Balancer, RoundRobinBalancer
from glassmesh.proxy.stages.eject import Outlier
from glassmesh.proxy.stages.endpoint import EndpointState
from glassmesh.proxy.stages.route import compile_policy


def endpoints(n: int, ewma: float = 0.001) -> list[EndpointState]:
    return [EndpointState("127.0.0.1", 9000 + i, f"host{i}", True, {}, ewma, 0.0) for i in range(n)]


def serve(b: Balancer, latency: dict[int, float], requests: int, now: float = 1.0) -> dict[int, int]:
    """Send requests one at a time, each taking its endpoint's latency; count picks per port."""
    got: dict[int, int] = {}
    for _ in range(requests):
        ep = b.pick(now)
        assert ep is not None
        ep.begin()
        now += 0.001
        ep.end(True, latency[ep.port], now)
        got[ep.port] = got.get(ep.port, 0) + 1
    return got


def test_p2c_avoids_the_slow_instance_and_round_robin_does_not() -> None:
    random.seed(1)
    eps = endpoints(3)
    lat = {9000: 0.002, 9001: 0.002, 9002: 0.200}  # one instance 100x slower
    got = serve(Balancer(eps), lat, 3000)
    assert got.get(9002, 0) < 30, got  # found slow at its first answer, then left alone
    got = serve(RoundRobinBalancer(endpoints(3)), lat, 3000)
    assert got == {9000: 1000, 9001: 1000, 9002: 1000}


def test_outstanding_requests_weigh_the_cost() -> None:
    random.seed(2)
    a, b = endpoints(2)
    for _ in range(10):
        a.begin()  # a is as fast but has 10 requests in flight
    bal = Balancer([a, b])
    assert all(bal.pick(1.0) is b for _ in range(100))


def test_an_avoided_instance_is_tried_again_once_its_estimate_has_decayed() -> None:
    random.seed(3)
    fast, slow = endpoints(2)
    slow.end(True, 0.5, 0.0)
    fast.begin()
    bal = Balancer([fast, slow])
    assert bal.pick(0.1) is fast
    # Nothing heard from `slow` for a long while: its estimate decays below fast's busy cost.
    fast.end(True, 0.01, 1000.0)
    fast.begin()
    assert bal.pick(1000.0) is slow


def test_ejected_and_excluded_are_skipped_and_ejection_alone_never_leaves_none() -> None:
    random.seed(4)
    eps = endpoints(4)
    eps[0].ejected_until = eps[1].ejected_until = 100.0
    bal = Balancer(eps)
    picked = {bal.pick(50.0).port for _ in range(200)}  # type: ignore[union-attr]
    assert picked == {9002, 9003}
    assert {bal.pick(50.0, {eps[2].key}).port for _ in range(50)} == {9003}  # type: ignore[union-attr]
    for ep in eps:
        ep.ejected_until = 100.0 + ep.port  # every one ejected: the one back soonest
    assert bal.pick(50.0).port == 9000  # type: ignore[union-attr]
    assert bal.pick(50.0, {eps[0].key}).port == 9001  # type: ignore[union-attr]
    assert bal.pick(50.0, {e.key for e in eps}) is None
    assert Balancer([]).pick(0.0) is None
    rr = RoundRobinBalancer(eps)
    assert rr.pick(50.0, {e.key for e in eps}) is None and rr.pick(200.0) is not None


def test_consecutive_failures_eject_for_a_doubling_time_and_the_endpoint_comes_back() -> None:
    eps = endpoints(4)
    out = Outlier(eps, consecutive_failures=3, base_ejection_s=10.0, max_ejection_s=25.0, max_ejection_percent=50)
    for ep in eps:
        ep.outlier = out
    ep = eps[0]
    ep.end(False, 0.01, 1.0)
    ep.end(False, 0.01, 1.0)
    ep.end(True, 0.01, 1.0)  # a success in between starts the count over
    ep.end(False, 0.01, 1.0)
    ep.end(False, 0.01, 1.0)
    assert not ep.ejected(1.0)
    ep.end(False, 0.01, 1.0)
    assert ep.ejected(1.0) and ep.ejected_until == 11.0 and ep.ejections == 1
    assert all(Balancer(eps).pick(5.0) is not ep for _ in range(100))
    ep.end(False, 0.01, 2.0)  # requests that were in flight when it was ejected fail too ...
    ep.end(False, 0.01, 2.0)
    assert not ep.ejected(11.0)  # back by itself, no timer
    ep.end(False, 0.01, 11.0)  # ... but do not count toward the next ejection: it starts clean
    ep.end(False, 0.01, 11.0)
    assert not ep.ejected(11.0)
    ep.end(True, 0.01, 11.0)
    for _ in range(3):
        ep.end(False, 0.01, 12.0)
    assert ep.ejected_until == 32.0  # 20 s: twice the first
    for _ in range(3):
        ep.end(False, 0.01, 40.0)
    assert ep.ejected_until == 65.0  # 25 s: the maximum
    ep.end(True, 0.01, 100.0)  # healthy for longer than the longest ejection: backoff starts over
    assert ep.ejections == 0
    # ... while glassmesh_endpoint_ejections_total, a counter, never goes down (rate() would read a reset).
    assert ep.ejections_total == 3
    # Each try's latency went into the endpoint's histogram (failures with their real time, not the penalty).
    assert sum(ep.lat_buckets) == ep.requests == 18 and abs(ep.lat_sum - 18 * 0.01) < 1e-9


def test_the_only_endpoint_is_never_ejected_and_two_allow_one() -> None:
    (only,) = endpoints(1)
    out = Outlier([only], 1, 10.0, 10.0, 50)
    assert out.max_ejected == 0
    only.outlier = out
    only.end(False, 0.0, 1.0)
    assert not only.ejected(1.0)
    assert Outlier(endpoints(2), 1, 1.0, 1.0, 10).max_ejected == 1
    assert Outlier(endpoints(10), 1, 1.0, 1.0, 35).max_ejected == 3
    assert Outlier(endpoints(10), 1, 1.0, 1.0, 0).max_ejected == 0


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 12), percent=st.integers(0, 100),
       events=st.lists(st.tuples(st.integers(0, 11), st.booleans(), st.floats(0.0, 5.0)), max_size=300))
def test_never_more_than_the_share_is_ejected(n: int, percent: int, events: list[tuple[int, bool, float]]) -> None:
    eps = endpoints(n)
    out = Outlier(eps, 2, 1.0, 8.0, percent)
    for ep in eps:
        ep.outlier = out
    limit = max(n * percent // 100, 1 if n >= 2 and percent else 0)
    now = 0.0
    for i, ok, dt in events:
        now += dt
        eps[i % n].end(ok, 0.001, now)
        assert out.ejected_count(now) <= limit


def test_endpoint_state_survives_a_new_snapshot_and_a_new_one_starts_below_the_fastest() -> None:
    def svc(ports: list[int]) -> Service:
        return Service(name="b", endpoints=[Endpoint(address=f"127.0.0.1:{p}", host=f"h{p}") for p in ports])

    _, eps, budget, limits = compile_policy(svc([1, 2, 3]), {}, 0.0)
    for ep, lat in zip(eps, (0.01, 0.02, 0.5), strict=True):
        ep.end(True, lat, 1.0)
    eps[2].ejected_until = 99.0
    old = {ep.key: ep for ep in eps}
    _, eps2, budget2, limits2 = compile_policy(svc([1, 3, 4]), old, 2.0, budget, limits)
    assert eps2[0] is old[("127.0.0.1", 1)] and eps2[1] is old[("127.0.0.1", 3)] and eps2[1].ejected_until == 99.0
    assert eps2[2].ewma_s == 0.005 and budget2 is budget and limits2 is limits  # half of 0.01, the lowest
    assert eps2[2].outlier is eps2[0].outlier is not None and eps2[0].outlier.endpoints == eps2  # type: ignore[union-attr]
    _, eps3, _, _ = compile_policy(Service(name="b", endpoints=svc([1]).endpoints,
                                           policy=Policy(outlier=None, balance="round_robin")), old, 3.0)
    assert eps3[0].outlier is None
    assert OutlierConfig().max_ejection_percent == 50


def test_two_instances_on_one_host_share_one_state_and_new_ones_start_below_the_fastest() -> None:
    svc = Service(name="b", endpoints=[Endpoint(address="127.0.0.1:1", host="h1"),
                                       Endpoint(address="127.0.0.1:1", host="h1"),
                                       Endpoint(address="127.0.0.1:2", host="h2")])
    _, eps, _, _ = compile_policy(svc, {}, 0.0)  # all new, one listed twice: none to start from
    assert eps[0] is eps[1] and eps[2] is not eps[0]
    big = Service(name="b", endpoints=[Endpoint(address=f"127.0.{i // 250}.{i % 250 + 1}:80", host=f"h{i}")
                                       for i in range(1000)])
    _, eps, _, _ = compile_policy(big, {}, 0.0)
    for i, ep in enumerate(eps[:500]):
        ep.ewma_s = 0.001 * (i + 1)
    _, eps2, _, _ = compile_policy(big, {ep.key: ep for ep in eps[:500]}, 1.0)
    assert eps2[:500] == eps[:500] and {ep.ewma_s for ep in eps2[500:]} == {0.0005}


def test_a_new_instance_gets_the_next_request_even_after_the_others_estimate_spiked() -> None:
    # The flake that found it: b2 answered in 0.7 ms, then once slowly (a peak EWMA takes the rise at
    # once) just before b3 came; b3, started at b2's estimate, waited ~3 s for its first request.
    def svc(ports: list[int]) -> Service:
        return Service(name="b", endpoints=[Endpoint(address=f"127.0.0.1:{p}", host=f"h{p}") for p in ports])

    table, eps, _, _ = compile_policy(svc([2]), {}, 0.0)
    now = 1.0
    for _ in range(200):
        now += 0.005
        eps[0].end(True, 0.0007, now)
    eps[0].end(True, 0.020, now)  # one slow answer
    _, eps2, _, _ = compile_policy(svc([2, 3]), {ep.key: ep for ep in eps}, now)
    b3 = eps2[1]
    picks = []
    bal = Balancer(eps2)
    for _ in range(5):
        now += 0.005
        ep = bal.pick(now)
        assert ep is not None
        picks.append(ep.port)
        ep.begin()
        ep.end(True, 0.0007, now)
    assert 3 in picks[:2], f"the new instance waits: {picks}"
    assert b3.requests >= 1


def test_an_avoided_endpoint_probed_again_starts_from_its_decayed_estimate() -> None:
    """One slow answer must not keep an instance out for long once it is fast again (one request at a time)."""
    a, b = endpoints(2)
    b.observe(0.003, 1.0)  # a 3 ms blip on b; a answers in 1 ms from here on
    bal = Balancer([a, b])
    now, last_b, gaps = 1.0, 1.0, []
    while now < 61.0:
        ep = bal.pick(now)
        assert ep is not None
        ep.begin()
        now += 0.005  # ~200 requests a second, as test_control_watch's traffic
        ep.end(True, 0.001 if ep is a else 0.0011, now)
        if ep is b:
            gaps.append(now - last_b)
            last_b = now
    gaps.append(now - last_b)
    # The first probe waits for the blip to decay (about 6 s); after it, b is tried every 2-3 s.
    # (Folding the probe's sample into the old peak put b back near 1.6 ms: 3.2 s, then shrinking slowly.)
    assert len(gaps) > 15 and max(gaps[1:]) < 2.6, [round(g, 2) for g in gaps]
    assert abs(b.ewma_s - 0.0011) < 0.0002, b.ewma_s


def test_an_instance_avoided_after_one_very_slow_answer_is_tried_again_within_seconds() -> None:
    """A 20 ms answer against a peer's 1 ms: tried again after about DECAY_S * (1 + ln 20) = 8 s, not 40 s."""
    a, b = endpoints(2)
    b.observe(0.020, 0.0)
    bal = Balancer([a, b])
    now, first_b = 0.0, None
    while now < 30.0 and first_b is None:
        ep = bal.pick(now)
        assert ep is not None
        ep.begin()
        now += 0.005
        ep.end(True, 0.001, now)
        if ep is b:
            first_b = now
    assert first_b is not None and 6.0 < first_b < 9.0, first_b
