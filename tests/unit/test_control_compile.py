"""compile_snapshots: each host gets only what its services need; versions move only with content."""

from __future__ import annotations

from glassmesh.control.compile import compile_snapshots, healthy_instances
from glassmesh.control.config import parse_config
from glassmesh.control.layout import host_layout
from glassmesh.control.store import InstanceRecord
from glassmesh.model.snapshot import encode_snapshot, parse_snapshot

MESH = """\
services:
  - {name: a, calls: [b]}
  - {name: b, port: 8080}
  - {name: c, port: 8081, instances: [{host: host3, address: 127.0.0.13:8081}]}
  - {name: db, protocol: tcp, port: 5432}
  - {name: lonely, calls: []}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
  - {name: host2, address: 127.0.0.12:4143, services: [b]}
  - {name: host3, address: 127.0.0.13:4143, services: [b, db]}
  - {name: host4, address: 127.0.0.14:4143, services: [lonely]}
tcp_links:
  - {host: host4, source: lonely, listen: 127.0.0.14:15432, destination: db}
"""
CFG = parse_config(MESH)
UP = [
    InstanceRecord("b", "host2", "127.0.0.12:8080", True),
    InstanceRecord("b", "host3", "127.0.0.13:8080", True),
    InstanceRecord("db", "host3", "127.0.0.13:5432", True),
]


def build(instances: list[InstanceRecord], versions: dict | None = None, version: int = 0) -> dict:  # type: ignore[type-arg]
    return compile_snapshots(CFG, instances, trust_domain="glassmesh.local", versions=versions or {}, version=version)


def eps(snap, name: str) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    svc = snap.service(name)
    return [(e.host, e.address) for e in svc.endpoints] if svc else []


def test_host_gets_only_what_its_services_call() -> None:
    snaps = build(UP)
    h1 = snaps["host1"]
    assert [s.name for s in h1.services] == ["b"]  # a calls only b
    assert eps(h1, "b") == [("host2", "127.0.0.12:4143"), ("host3", "127.0.0.13:4143")]
    assert [(s.name, s.outbound, s.cert, s.key) for s in h1.local_services] == [
        ("a", "127.0.0.11:4140", "certs/a.pem", "certs/a.key")]
    # b calls everything (no calls: list); c's static instance counts without a report.
    assert [s.name for s in snaps["host2"].services] == ["a", "b", "c", "db", "lonely"]
    assert eps(snaps["host2"], "c") == [("host3", "127.0.0.13:4143")]
    # host4's only service calls nothing, but its tcp link needs db.
    assert [s.name for s in snaps["host4"].services] == ["db"]
    assert snaps["host4"].tcp_links[0].listen == "127.0.0.14:15432"


def test_local_instances_and_listeners() -> None:
    h3 = build(UP)["host3"]
    local = {s.name: s for s in h3.local_services}
    assert local["b"].instances == ["127.0.0.13:8080"] and local["db"].protocol == "tcp"
    assert local["c"].instances == ["127.0.0.13:8081"]  # a static instance makes c local to host3
    # b and c call everything (no calls:); db is tcp and lists no calls, so it calls nothing and gets
    # no outbound listener, but keeps its place in the port order (c's listener does not move).
    assert {n: s.outbound for n, s in local.items()} == {
        "b": "127.0.0.13:4140", "db": None, "c": "127.0.0.13:4142"}
    assert {n: s.calls for n, s in local.items()} == {"b": None, "db": [], "c": None}


def test_a_service_that_calls_nothing_gets_no_outbound_listener() -> None:
    snaps = build(UP)
    assert [(s.name, s.outbound, s.calls) for s in snaps["host4"].local_services] == [("lonely", None, [])]
    assert [(s.name, s.outbound, s.calls) for s in snaps["host1"].local_services] == [
        ("a", "127.0.0.11:4140", ["b"])]


def test_a_host_that_may_not_call_everything_knows_the_rest_by_name() -> None:
    snaps = build(UP)
    assert snaps["host1"].withheld_services == ["a", "c", "db", "lonely"]  # a calls only b
    assert snaps["host4"].withheld_services == ["a", "b", "c", "lonely"]  # only its tcp link's db
    assert snaps["host2"].withheld_services == []  # b calls everything: nothing withheld


def test_every_snapshot_passes_the_proxy_checks() -> None:
    for snap in build(UP).values():
        parse_snapshot(encode_snapshot(snap))


def test_unhealthy_and_unclaimed_reports_are_not_endpoints() -> None:
    reports = [
        InstanceRecord("b", "host2", "127.0.0.12:8080", False, detail="connect refused"),
        InstanceRecord("b", "host3", "127.0.0.13:8080", True),
        InstanceRecord("a", "host2", "127.0.0.12:9999", True),  # host2 does not run a
        InstanceRecord("c", "host3", "127.0.0.13:8081", False),  # reported sick: the static one goes too
    ]
    healthy = healthy_instances(CFG, reports)
    assert healthy["b"] == [("host3", "127.0.0.13:8080")]
    assert healthy["a"] == [] and healthy["c"] == []


def test_two_instances_on_one_host_are_two_endpoints() -> None:
    extra = [*UP, InstanceRecord("b", "host2", "127.0.0.12:8090", True)]
    assert eps(build(extra)["host1"], "b").count(("host2", "127.0.0.12:4143")) == 2


def test_versions_stay_when_content_does_not_change() -> None:
    first = build(UP, version=5)
    assert {s.version for s in first.values()} == {5}
    again = build(UP, first, version=9)
    assert all(again[h] is first[h] for h in first)
    # b loses host3: every host that lists b moves on, host4 (db only) keeps its version.
    changed = build(UP[:1] + UP[2:], first, version=9)
    assert changed["host1"].version == 9 and changed["host2"].version == 9
    assert changed["host4"].version == 5
    # A lower revision never moves a version backwards.
    assert build(UP, changed, version=3)["host1"].version == 10


def test_guarded_endpoints_replace_the_computed_ones() -> None:
    snaps = compile_snapshots(CFG, [], trust_domain="glassmesh.local", versions={},
                              endpoints={"b": [("host2", "127.0.0.12:8080")]})
    assert eps(snaps["host1"], "b") == [("host2", "127.0.0.12:4143")]


def test_layout_keeps_the_port_of_a_service_without_a_listener() -> None:
    """A listener never moves because a service before it calls nothing (or starts calling something)."""
    def outbound(cache_calls: str) -> dict[str, str]:
        cfg = parse_config(f"""\
services:
  - {{name: cache, protocol: tcp{cache_calls}}}
  - {{name: api}}
  - {{name: web, calls: []}}
hosts:
  - {{name: host3, address: 127.0.0.13:4143, services: [cache, api, web]}}
""")
        return host_layout(cfg, cfg.hosts[0]).outbound

    assert outbound("") == {"api": "127.0.0.13:4141"}
    assert outbound(", calls: [api]") == {"cache": "127.0.0.13:4140", "api": "127.0.0.13:4141"}


REAL_HOSTS = """
services:
  - {name: web, port: 8080, calls: [api]}
  - {name: api, port: 9000}
hosts:
  - {name: h1, address: "10.0.0.1:4143", services: [web]}
  - {name: h2, address: "[fd00::2]:4143", services: [api]}
  - {name: h3, address: "10.0.0.3:4143", services: [api], admin: "10.0.0.3:4191"}
"""


def test_only_the_inbound_port_faces_the_network() -> None:
    """On a real host, outbound listeners, admin and apps are on loopback; the inbound port is the host's."""
    cfg = parse_config(REAL_HOSTS, "mesh.yaml")
    up = [InstanceRecord("api", "h2", "[::1]:9000", True), InstanceRecord("api", "h3", "127.0.0.1:9000", True)]
    snaps = compile_snapshots(cfg, up, trust_domain="glassmesh.local", versions={}, version=1)
    h1, h2, h3 = snaps["h1"], snaps["h2"], snaps["h3"]
    assert (h1.inbound, h1.admin) == ("10.0.0.1:4143", "127.0.0.1:4191")
    assert [(s.name, s.outbound, s.instances) for s in h1.local_services] == [
        ("web", "127.0.0.1:4140", ["127.0.0.1:8080"])]
    assert (h2.admin, h2.local_services[0].outbound, h2.local_services[0].instances) == (
        "[::1]:4191", "[::1]:4140", ["[::1]:9000"])
    assert h3.admin == "10.0.0.3:4191"  # pinned by the operator: their choice
    # Callers reach api through each host's inbound (network) address, never its app port.
    assert [e.address for e in h1.services[0].endpoints] == ["[fd00::2]:4143", "10.0.0.3:4143"]


CALLERS = """
services:
  - {name: web, port: 8080, calls: [api]}
  - {name: batch, port: 8081, calls: [cache]}
  - {name: api, port: 9000}
  - {name: cache, port: 6379, protocol: tcp}
  - {name: open, port: 9100, calls: []}
hosts:
  - {name: h1, address: "127.0.0.21:4143", services: [web, batch]}
  - {name: h2, address: "127.0.0.22:4143", services: [api, cache, open]}
tcp_links:
  - {host: h1, source: web, listen: "127.0.0.21:16379", destination: cache}
"""


def test_each_service_names_who_may_call_it() -> None:
    """The inbound authorize step's input: calls: lists (and tcp links) turned around per destination."""
    cfg = parse_config(CALLERS, "mesh.yaml")
    snaps = compile_snapshots(cfg, [], trust_domain="glassmesh.local", versions={}, version=1)
    callers = {s.name: s.callers for s in snaps["h2"].local_services}
    # api calls everything (no calls:), so it may call itself and the others; web lists api.
    assert callers == {"api": ["api", "web"], "cache": ["api", "batch", "web"], "open": ["api"]}


def test_callers_get_the_destinations_policy_and_each_endpoints_labels() -> None:
    from tests.unit.test_control_config_policy import CANARY

    cfg = parse_config(CANARY, "mesh.yaml")
    up = [InstanceRecord("b", "host2", "127.0.0.12:8080", True), InstanceRecord("b", "host3", "127.0.0.13:8080", True)]
    snaps = compile_snapshots(cfg, up, trust_domain="glassmesh.local", versions={})
    b = snaps["host1"].service("b")
    assert b is not None and b.policy is not None
    assert [(e.host, e.labels) for e in b.endpoints] == [
        ("host2", {"version": "v1"}), ("host3", {"version": "v2"}), ("host4", {"version": "v1"})]
    api = b.policy.routes[0]
    assert api.match.methods == ["GET"] and api.match.headers == {"x-user": "beta"}  # as proxies compare them
    assert [(x.subset, x.weight) for x in api.split] == [("v1", 99), ("v2", 1)]
    assert snaps["host1"].service("a").policy is None  # type: ignore[union-attr]  # none set: not on the wire
    # Must-understand: a proxy that would ignore the policy refuses the snapshot (model/snapshot.py FEATURES).
    assert snaps["host1"].requires == ["policy"]
    assert all(s.requires == [] for s in snaps.values() if all(x.policy is None for x in s.services))
    # What the proxy reads back is what was compiled, and it passes the proxy's own checks.
    again = parse_snapshot(encode_snapshot(snaps["host1"]))
    assert again.service("b") == b
    # A weight change reaches the callers as a new version.
    shifted = parse_config(CANARY.replace("weight: 99}", "weight: 90}").replace("weight: 1}", "weight: 10}"))
    after = compile_snapshots(shifted, up, trust_domain="glassmesh.local", versions=snaps)
    assert after["host1"].version > snaps["host1"].version
    assert after["host1"].service("b").policy.routes[0].split[1].weight == 10  # type: ignore[union-attr]
