"""`glassmesh explain` picks the route the proxy picks: control/explain.explain_snapshot on compiled snapshots.

The snapshots come from the control plane's own compile of a mesh.yaml, and
the route from the proxy's own matching code; each case is checked against
RouteTable.match called the way the outbound side calls it.
"""

from __future__ import annotations

import time

import pytest

from glassmesh.control.compile import compile_snapshots
from glassmesh.control.config import parse_config
from glassmesh.control.explain import ExplainError, explain_snapshot
from glassmesh.control.store import InstanceRecord
from glassmesh.proxy.chain import compile_chain

MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: 9000
    calls: []
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    routes:
      - name: beta
        match: {path_prefix: /, headers: {x-beta: "1"}}
        split: [{subset: v2, weight: 1}]
      - name: reads
        match: {path_regex: "/items/[0-9]+$", methods: [GET, HEAD]}
        split: [{subset: v1, weight: 3}, {subset: v2, weight: 1}]
        timeout_ms: 1500
        retry: {attempts: 3, on_status: [502, 503], connect_failures: false}
  - name: c
    port: 9001
    calls: []
hosts:
  - {name: host1, address: "127.0.0.1:4143", services: [a]}
  - {name: host2, address: "127.0.0.2:4143", services: [{name: b, labels: {version: v1}}]}
  - {name: host3, address: "127.0.0.3:4143", services: [{name: b, labels: {version: v2}}, c]}
"""


@pytest.fixture(scope="module")
def snaps():  # type: ignore[no-untyped-def]
    cfg = parse_config(MESH)
    inst = [InstanceRecord("b", "host2", "127.0.0.2:9000", True), InstanceRecord("b", "host3", "127.0.0.3:9000", True),
            InstanceRecord("c", "host3", "127.0.0.3:9001", True)]
    return compile_snapshots(cfg, inst, trust_domain="t.local", versions={}, version=7)


@pytest.mark.parametrize(("method", "path", "headers", "route"), [
    ("GET", "/items/12", {}, "reads"),
    ("HEAD", "/items/12?x=1", {}, "reads"),  # the query string is not part of the path
    ("POST", "/items/12", {}, "default"),
    ("GET", "/items/12/x", {}, "default"),
    ("GET", "/items/12", {"X-Beta": "1"}, "beta"),
])
def test_the_route_is_the_one_the_proxy_picks(snaps, method: str, path: str, headers: dict[str, str],  # type: ignore[no-untyped-def]
                                              route: str) -> None:
    doc = explain_snapshot(snaps, "a", "b", method, path, headers)
    assert doc["route"]["name"] == route
    chain = compile_chain(snaps["host1"].service("b"), None, time.monotonic())
    hdrs = {k.lower().encode(): v.encode() for k, v in headers.items()}
    assert chain.routes.match(method.encode(), path.encode(), hdrs.get).name.decode() == route


def test_split_weights_timeouts_retries_and_authorization(snaps) -> None:  # type: ignore[no-untyped-def]
    doc = explain_snapshot(snaps, "a", "b", "GET", "/items/3", {})
    assert doc["host"] == "host1" and doc["snapshot_version"] == snaps["host1"].version
    r = doc["route"]
    assert r["not_matched"] == ["beta"] and r["match"] == {"path_regex": "/items/[0-9]+$", "methods": ["GET", "HEAD"]}
    assert [(b["subset"], b["share"], [e["host"] for e in b["endpoints"]]) for b in r["split"]] == [
        ("v1", 0.75, ["host2"]), ("v2", 0.25, ["host3"])]
    assert r["split"][0]["endpoints"][0]["labels"] == {"version": "v1"}
    assert r["timeout_ms"] == 1500 and r["idle_timeout_ms"] is None
    assert r["retry"] == {"attempts": 3, "on_status": [502, 503], "connect_failures": False}
    assert doc["policy"]["retry_budget"] == {"percent": 20.0, "min_per_second": 10.0}
    assert doc["timeouts_ms"]["connect_ms"] == 3000
    assert doc["authorization"]["allowed"] is True and doc["authorization"]["outbound"].endswith("(calls: b)")
    assert [i["host"] for i in doc["authorization"]["inbound"]] == ["host2", "host3"]


def test_refusals_and_unknowns(snaps) -> None:  # type: ignore[no-untyped-def]
    doc = explain_snapshot(snaps, "a", "c", "GET", "/", {})
    assert doc["authorization"]["allowed"] is False and "route" not in doc
    assert doc["authorization"]["outbound"] == "403 call_not_allowed: a's calls: does not list c"
    with pytest.raises(ExplainError, match="no host runs nosuch"):
        explain_snapshot(snaps, "nosuch", "b", "GET", "/", {})
    with pytest.raises(ExplainError, match="host host2 does not run a .hosts that do: host1."):
        explain_snapshot(snaps, "a", "b", "GET", "/", {}, host="host2")
