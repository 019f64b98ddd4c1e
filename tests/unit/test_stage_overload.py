"""Overload limits, fault and mirror deciders, driven without sockets."""

from __future__ import annotations

import random

from glassmesh.proxy.stages.balance import Balancer
from glassmesh.proxy.stages.endpoint import EndpointState
from glassmesh.proxy.stages.fault import FaultStage
from glassmesh.proxy.stages.mirror import MirrorStage
from glassmesh.proxy.stages.overload import Limits


def test_limits_refuse_at_once_and_name_the_limit() -> None:
    lim = Limits(max_connections=1, max_pending=0, max_requests=2)
    assert lim.admit() is None and lim.admit() is None
    assert lim.admit() == "max_requests" and lim.refused_requests == 1
    lim.done()
    assert lim.admit() is None
    assert lim.wait() == "max_pending"
    assert lim.connect() is None and lim.connect() == "max_connections"
    lim.closed()
    assert lim.connect() is None
    lim.set(None, None, None)  # limits lifted by a new snapshot; what is in flight is still counted
    assert lim.requests == 2 and all(lim.admit() is None for _ in range(1000))
    unlimited = Limits()
    assert unlimited.wait() is None and unlimited.connect() is None
    unlimited.done()
    unlimited.done()
    assert unlimited.requests == 0  # never below zero


def test_faults_hit_their_share() -> None:
    random.seed(5)
    f = FaultStage(0.25, 10.0, 503, 50.0)
    got = [f.decide() for _ in range(10_000)]
    delays = sum(1 for d, _ in got if d == 0.25)
    aborts = sum(1 for _, s in got if s == 503)
    assert 850 < delays < 1150 and 4700 < aborts < 5300
    assert f.delayed == delays and f.aborted == aborts
    assert all(FaultStage(1.0, 0.0, 0, 100.0).decide() == (0.0, 0) for _ in range(100))


def test_mirror_picks_its_share_only_when_it_has_endpoints() -> None:
    random.seed(6)
    bal = Balancer([EndpointState("127.0.0.1", 1, "h", True, {})])
    m = MirrorStage(b"v2", bal, 20.0)
    hits = sum(1 for _ in range(10_000) if m.pick() is bal)
    assert 1800 < hits < 2200 and m.mirrored == hits
    assert MirrorStage(b"v2", Balancer([]), 100.0).pick() is None
