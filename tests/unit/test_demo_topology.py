"""The demo's pieces that need no proxy: topology files, metrics arithmetic, apps, port checks."""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket

import pytest

from glassmesh.demo import metrics as m
from glassmesh.demo.apps import Backend, Frontend
from glassmesh.demo.httpio import Connection, serve_connection
from glassmesh.demo.procs import PortBusy, check_bindable
from glassmesh.demo.runner import build_demo_topology, demo_hosts
from glassmesh.demo.topology import HostSpec, LocalSpec, TopologyError, build_topology, mesh_config
from glassmesh.demo.traffic import Counts
from glassmesh.model.snapshot import load_snapshot

# --- topology -----------------------------------------------------------------------------------------


def _demo_snapshots(topo, healthy=None):
    """What the control plane compiles from the demo's mesh.yaml, every instance reported healthy
    (or those in `healthy`: (service, host) pairs), checked as a proxy checks what it is sent."""
    from glassmesh.control.compile import compile_snapshots
    from glassmesh.control.config import parse_config
    from glassmesh.control.store import InstanceRecord
    from glassmesh.model.snapshot import encode_snapshot, parse_snapshot

    cfg = parse_config(open(topo.mesh_yaml).read(), topo.mesh_yaml)
    reports = [InstanceRecord(svc.name, i.host, i.address, healthy=healthy is None or (svc.name, i.host) in healthy)
               for svc in topo.services.values() for i in svc.instances]
    snaps = compile_snapshots(cfg, reports, trust_domain=topo.trust_domain, versions={})
    # Relative paths resolve against the proxy's --data dir, as they do for a snapshot from the control plane.
    return {h: parse_snapshot(encode_snapshot(snap), topo.host(h).dir) for h, snap in snaps.items()}


def test_demo_mesh_yaml_compiles_to_the_four_host_snapshots(tmp_path):
    topo = build_demo_topology(str(tmp_path))
    assert topo.control == "https://127.0.0.1:4200" and topo.control_dir == str(tmp_path / "control")
    assert topo.ca_dir == str(tmp_path / "control" / "ca")  # the control plane's own CA: there is one
    text = (tmp_path / "mesh.yaml").read_text()
    assert "calls: [b, c]" in text and "health: {tcp: true, interval_ms: 500, timeout_ms: 250}" in text
    snaps = _demo_snapshots(topo)
    assert sorted(snaps) == ["host1", "host2", "host3", "host4"]
    # B's v1 on host2 and host4, v2 on host3, and a route that sends v2 nothing yet (the canary starts at 0%).
    assert "- name: host3\n  address: 127.0.0.13:4143\n  services:\n  - name: b\n    labels: {version: v2}\n  - c\n" in text

    s1 = snaps["host1"]
    assert s1.host == "host1" and s1.inbound == "127.0.0.11:4143" and s1.admin == "127.0.0.11:4191"
    (a,) = s1.local_services
    assert (a.name, a.outbound, a.instances) == ("a", "127.0.0.11:4140", ["127.0.0.11:8080"])
    b, c = s1.service("b"), s1.service("c")
    assert [(e.address, e.host, e.labels) for e in b.endpoints] == [
        ("127.0.0.12:4143", "host2", {"version": "v1"}), ("127.0.0.13:4143", "host3", {"version": "v2"}),
        ("127.0.0.14:4143", "host4", {"version": "v1"})]
    assert b.policy is not None and [(x.subset, x.weight) for x in b.policy.routes[0].split] == [("v1", 100), ("v2", 0)]
    assert c.policy is None
    assert [(e.address, e.host) for e in c.endpoints] == [("127.0.0.13:4143", "host3")]
    # b and c call nobody: their hosts' snapshots list no services.
    assert snaps["host2"].services == [] and snaps["host3"].services == [] and snaps["host4"].services == []
    assert [(ls.name, ls.instances, ls.health_interval_ms) for ls in snaps["host3"].local_services] == [
        ("b", ["127.0.0.13:8080"], 500), ("c", ["127.0.0.13:8081"], 500)]

    # Certificates are where the proxy looks for them (DIR/certs), and topology.json says where it listens.
    for h, snap in snaps.items():
        info = topo.host(h)
        assert snap.trust_bundle == str(tmp_path / h / "certs" / "ca.pem") == info.trust_bundle
        assert {ls.name: ls.outbound for ls in snap.local_services if ls.outbound} == info.outbound
        assert (snap.inbound, snap.admin) == (info.inbound, info.admin)
        for ls in snap.local_services:
            assert (ls.cert, ls.key) == info.certs[ls.name]
        assert info.snapshot == str(tmp_path / h / "snapshot.json")  # written by the proxy (last-known-good)
        assert not os.path.exists(info.snapshot), "a snapshot on disk would be served before the control plane's"


def test_demo_snapshots_load_in_a_proxy(tmp_path):
    from glassmesh.proxy.routing import compile_table

    topo = build_demo_topology(str(tmp_path))
    for h in topo.hosts.values():  # what each proxy's join writes (by CSR), where the snapshot names it
        os.makedirs(os.path.dirname(h.trust_bundle), exist_ok=True)
        open(h.trust_bundle, "wb").write(topo.ca.cert_pem)
        for svc, (cert, _key) in h.certs.items():
            topo.ca.issue("service", svc).write(cert[: -len(".pem")])
    for snap in _demo_snapshots(topo).values():
        compile_table(snap)  # certificates and keys load, as the proxy does before it accepts a snapshot


def test_stopped_instance_leaves_host1s_snapshot_and_the_guard_lets_it(tmp_path):
    """B on host2 reported unhealthy: host1 keeps host3 and host4, and one of three is within max_endpoint_drop."""
    from glassmesh.control.guard import guard

    topo = build_demo_topology(str(tmp_path))
    up = {("a", "host1"), ("b", "host3"), ("b", "host4"), ("c", "host3")}
    snaps = _demo_snapshots(topo, healthy=up)
    assert [e.host for e in snaps["host1"].service("b").endpoints] == ["host3", "host4"]
    d = guard({"b": [("host2", "127.0.0.12:8080"), ("host3", "127.0.0.13:8080"), ("host4", "127.0.0.14:8080")]},
              {"b": [("host3", "127.0.0.13:8080"), ("host4", "127.0.0.14:8080")]}, max_drop={"b": 0.5})
    assert d.held == {} and d.push["b"] == [("host3", "127.0.0.13:8080"), ("host4", "127.0.0.14:8080")]


def test_certs_are_named_where_the_join_puts_them_and_none_is_made_ahead(tmp_path):
    """Hosts join with tokens: their keys are made by their proxies, never by the demo beforehand."""
    topo = build_demo_topology(str(tmp_path))
    for h in topo.hosts.values():
        assert sorted(h.certs) == sorted(h.local_services)
        for svc, (cert, key) in h.certs.items():
            assert (cert, key) == (os.path.join(h.dir, "certs", f"{svc}.pem"), os.path.join(h.dir, "certs", f"{svc}.key"))
            assert not os.path.exists(cert) and not os.path.exists(key)
        assert oct(os.stat(h.dir).st_mode & 0o777) == "0o700"


def test_topology_json_lists_addresses_and_instances(tmp_path):
    topo = build_demo_topology(str(tmp_path))
    doc = json.loads((tmp_path / "topology.json").read_text())
    assert doc == topo.to_json()
    assert doc["control"] == {"url": "https://127.0.0.1:4200", "data": str(tmp_path / "control"),
                              "mesh_yaml": str(tmp_path / "mesh.yaml")}
    h1 = doc["hosts"]["host1"]
    assert h1["outbound"] == {"a": "127.0.0.11:4140"} and h1["data"] == str(tmp_path / "host1")
    assert (h1["inbound"], h1["admin"]) == ("127.0.0.11:4143", "127.0.0.11:4191")
    assert doc["hosts"]["host3"]["instances"] == {"b": ["127.0.0.13:8080"], "c": ["127.0.0.13:8081"]}
    assert doc["hosts"]["host3"]["outbound"] == {}  # b and c call nothing (calls: []): no outbound listener
    assert doc["services"]["b"]["instances"] == [
        {"host": "host2", "address": "127.0.0.12:8080"},
        {"host": "host3", "address": "127.0.0.13:8080"},
        {"host": "host4", "address": "127.0.0.14:8080"},
    ]
    assert doc["services"]["a"]["instances"] == [{"host": "host1", "address": "127.0.0.11:8080"}]
    assert open(doc["ca_cert"], "rb").read().startswith(b"-----BEGIN CERTIFICATE")


def test_mesh_config_refuses_what_a_control_plane_cannot_express(tmp_path):
    with pytest.raises(TopologyError, match="one port"):
        mesh_config([HostSpec("h1", "127.0.0.21", [LocalSpec("x", instances=[9000])]),
                     HostSpec("h2", "127.0.0.22", [LocalSpec("x", instances=[9001])])])
    with pytest.raises(TopologyError, match="at most one instance"):
        mesh_config([HostSpec("h1", "127.0.0.21", [LocalSpec("x", instances=[9000, 9001])])])
    doc = mesh_config([HostSpec("h1", "127.0.0.21", [LocalSpec("x"), LocalSpec("db", "tcp", [5432])],
                                admin_port=9191)], calls=None)
    assert doc == {"services": [{"name": "x"}, {"name": "db", "protocol": "tcp", "port": 5432}],
                   "hosts": [{"name": "h1", "address": "127.0.0.21:4143", "admin": "127.0.0.21:9191",
                              "services": ["x", "db"]}]}


def test_bounce_schedule():
    from glassmesh.demo.runner import bounce_schedule

    assert bounce_schedule(0) == (10.0, 15.0)  # until Ctrl-C
    assert bounce_schedule(5) is None  # too short to see it leave and come back
    assert bounce_schedule(15) == (6.0, 9.75)
    assert bounce_schedule(20) == (8.0, 13.0)
    assert bounce_schedule(100) == (40.0, 45.0)


def test_describe_push():
    from glassmesh.demo.runner import Push, describe_push

    p = Push(0.0, "host1", 12, {"b": ["host3"], "c": ["host3"]}, {"b": ["host2", "host3"], "c": ["host3"]})
    assert describe_push(p) == "b now host3 (was host2, host3)"
    assert describe_push(Push(0.0, "host1", 13, {"b": []}, {"b": ["host3"]})) == "b now nothing (was host3)"
    assert describe_push(Push(0.0, "host2", 3, {}, {})) == ""


def test_several_outbound_services_get_their_own_ports_skipping_taken_ones(tmp_path):
    svcs = [LocalSpec(n) for n in ("p", "q", "r", "s", "t")]
    topo = build_topology(tmp_path, [HostSpec("h", "127.0.0.21", svcs)])
    # 4143 is the inbound port: the fourth outbound listener skips it.
    assert topo.host("h").outbound == {
        "p": "127.0.0.21:4140", "q": "127.0.0.21:4141", "r": "127.0.0.21:4142",
        "s": "127.0.0.21:4144", "t": "127.0.0.21:4145",
    }
    load_snapshot(topo.host("h").snapshot)


def test_calls_none_gives_every_host_every_service_and_instances_repeat_the_inbound(tmp_path):
    hosts = [
        HostSpec("h1", "127.0.0.21", [LocalSpec("x", instances=[9000])]),
        HostSpec("h2", "127.0.0.22", [LocalSpec("y", instances=[9000, 9001], outbound=False)]),
    ]
    topo = build_topology(tmp_path, hosts, ports=(5140, 5143, 5191))
    for h in ("h1", "h2"):
        snap = load_snapshot(topo.host(h).snapshot)
        assert sorted(s.name for s in snap.services) == ["x", "y"]
    y = load_snapshot(topo.host("h1").snapshot).service("y")
    assert [e.address for e in y.endpoints] == ["127.0.0.22:5143", "127.0.0.22:5143"]


def test_tcp_link_and_per_host_ports(tmp_path):
    hosts = [
        HostSpec("app", "127.0.0.21", [LocalSpec("web")], outbound_port=6140, inbound_port=6143, admin_port=6191),
        HostSpec("data", "127.0.0.22", [LocalSpec("db", protocol="tcp", instances=[5432], outbound=False)]),
    ]
    topo = build_topology(tmp_path, hosts, tcp_links=[("app", "web", 15432, "db")], calls={"web": []})
    snap = load_snapshot(topo.host("app").snapshot)
    assert snap.inbound == "127.0.0.21:6143" and snap.local("web").outbound == "127.0.0.21:6140"
    assert [(t.source, t.listen, t.destination) for t in snap.tcp_links] == [("web", "127.0.0.21:15432", "db")]
    db = snap.service("db")
    assert db.protocol == "tcp" and [e.address for e in db.endpoints] == ["127.0.0.22:4143"]


def test_rebuild_in_place_and_refuse_foreign_directory(tmp_path):
    build_demo_topology(str(tmp_path / "s"))
    # What the last run's processes left: the control plane's store, a proxy's last-known-good snapshot.
    old_ca = (tmp_path / "s" / "control" / "ca" / "ca.pem").read_bytes()
    (tmp_path / "s" / "control" / "control.sqlite").write_text("old")
    (tmp_path / "s" / "host1" / "snapshot.json").write_text("{}")
    build_demo_topology(str(tmp_path / "s"))  # a second run replaces the first, starting from nothing
    assert not (tmp_path / "s" / "control" / "control.sqlite").exists()
    assert not (tmp_path / "s" / "host1" / "snapshot.json").exists()
    assert (tmp_path / "s" / "control" / "ca" / "ca.pem").read_bytes() != old_ca  # a new mesh, a new CA
    assert (tmp_path / "s" / "mesh.yaml").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(TopologyError, match="not empty"):
        build_demo_topology(str(foreign))
    assert (foreign / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"calls": {"x": ["nope"]}}, "nope"),
        ({"tcp_links": [("h1", "zz", 1, "x")]}, "zz"),
        ({"tcp_links": [("h9", "x", 1, "x")]}, "h9"),
    ],
)
def test_bad_descriptions_are_refused(tmp_path, kwargs, match):
    with pytest.raises(TopologyError, match=match):
        build_topology(tmp_path, [HostSpec("h1", "127.0.0.21", [LocalSpec("x")])], **kwargs)


# --- metrics arithmetic ---------------------------------------------------------------------------------

INF = math.inf


def test_histogram_quantile_interpolates_inside_the_bucket():
    # 100 observations: 50 in (0, 0.005], 40 in (0.005, 0.01], 10 in (0.01, 0.025].
    buckets = [(0.005, 50), (0.01, 90), (0.025, 100), (INF, 100)]
    assert m.histogram_quantile(0.5, buckets) == pytest.approx(0.005)
    assert m.histogram_quantile(0.25, buckets) == pytest.approx(0.0025)
    assert m.histogram_quantile(0.7, buckets) == pytest.approx(0.0075)
    assert m.histogram_quantile(0.99, buckets) == pytest.approx(0.01 + 0.015 * 9 / 10)


def test_histogram_quantile_edges():
    assert m.histogram_quantile(0.5, [(0.1, 0), (INF, 0)]) is None  # nothing observed
    assert m.histogram_quantile(0.5, []) is None
    # Everything above the last finite bound: that bound is all we can say.
    assert m.histogram_quantile(0.99, [(0.1, 0), (1.0, 0), (INF, 7)]) == 1.0
    # Order does not matter; empty leading buckets do not pull the estimate down.
    assert m.histogram_quantile(0.5, [(INF, 4), (0.2, 4), (0.1, 0)]) == pytest.approx(0.15)
    with pytest.raises(ValueError):
        m.histogram_quantile(1.5, [(INF, 1)])


def test_quantile_from_bucket_deltas_sees_only_the_interval():
    before = {0.005: 1000.0, 0.01: 1000.0, 0.1: 1000.0, INF: 1000.0}  # old, all fast
    now = {0.005: 1000.0, 0.01: 1010.0, 0.1: 1020.0, INF: 1020.0}  # last second: 10 medium, 10 slow
    delta = m.bucket_delta(now, before)
    assert delta == [(0.005, 0.0), (0.01, 10.0), (0.1, 20.0), (INF, 20.0)]
    assert m.histogram_quantile(0.5, delta) == pytest.approx(0.01)
    assert m.histogram_quantile(0.99, delta) == pytest.approx(0.01 + 0.09 * 9.8 / 10)
    # A restarted proxy (counters went down) counts from zero again.
    assert m.bucket_delta({0.01: 3.0, INF: 3.0}, before) == [(0.01, 3.0), (INF, 3.0)]


METRICS = """\
# HELP glassmesh_requests_total Requests per link.
# TYPE glassmesh_requests_total counter
glassmesh_requests_total{side="outbound",source="a",destination="b",status_class="2xx"} 95.0
glassmesh_requests_total{side="outbound",source="a",destination="b",status_class="5xx"} 5.0
glassmesh_requests_total{side="outbound",source="a",destination="c",status_class="2xx"} 10.0
glassmesh_requests_total{side="inbound",source="x",destination="a",status_class="2xx"} 999.0
# HELP glassmesh_request_duration_seconds Latency per link.
# TYPE glassmesh_request_duration_seconds histogram
glassmesh_request_duration_seconds_bucket{side="outbound",source="a",destination="b",le="0.005"} 60.0
glassmesh_request_duration_seconds_bucket{side="outbound",source="a",destination="b",le="0.01"} 100.0
glassmesh_request_duration_seconds_bucket{side="outbound",source="a",destination="b",le="+Inf"} 100.0
glassmesh_request_duration_seconds_sum{side="outbound",source="a",destination="b"} 0.5
glassmesh_request_duration_seconds_count{side="outbound",source="a",destination="b"} 100.0
# HELP glassmesh_link_mtls Whether the link's last connection was mutual TLS.
# TYPE glassmesh_link_mtls gauge
glassmesh_link_mtls{side="outbound",source="a",destination="b",tls_version="TLSv1.3"} 1.0
glassmesh_link_mtls{side="outbound",source="a",destination="c",tls_version="TLSv1.3"} 0.0
# HELP glassmesh_tls_handshakes_total Completed mTLS handshakes.
# TYPE glassmesh_tls_handshakes_total counter
glassmesh_tls_handshakes_total{side="outbound",source="a",destination="b"} 3.0
"""


def test_parse_links_and_figures():
    links = m.parse_links(METRICS, "outbound")
    assert set(links) == {("a", "b"), ("a", "c")}
    ab = links[("a", "b")]
    assert ab.requests == {"2xx": 95.0, "5xx": 5.0} and ab.total == 100
    assert ab.mtls and ab.tls_version == "TLSv1.3" and ab.handshakes == 3
    assert not links[("a", "c")].mtls

    f = m.figures(ab, None, 10.0)
    assert f.requests == 100 and f.rate == pytest.approx(10.0) and f.success == pytest.approx(0.95)
    assert f.p50 == pytest.approx(0.005 * 50 / 60)

    before = m.LinkSample(requests={"2xx": 45.0, "5xx": 5.0}, buckets={0.005: 30.0, 0.01: 50.0, INF: 50.0})
    f = m.figures(ab, before, 2.0)
    assert f.requests == 50 and f.rate == pytest.approx(25.0) and f.success == 1.0
    assert f.p50 == pytest.approx(0.005 * 25 / 30)
    assert m.fmt_ms(f.p50) == "4.2 ms" and m.fmt_pct(f.success) == "100.0%"
    assert m.figures(m.LinkSample(), None, 1.0).success is None


def test_runner_rows_per_interval_and_who_served():
    from glassmesh.demo.runner import Scrape, _fmt_spread, _rows

    links = m.parse_links(METRICS, "outbound")
    before = Scrape({("a", "b"): m.LinkSample(requests={"2xx": 90.0}, buckets={0.005: 60.0, 0.01: 90.0, INF: 90.0})},
                    {("a", "b"): {"host2": 40.0, "host3": 45.0}})
    now = Scrape(links, {("a", "b"): {"host2": 45.0, "host3": 50.0}, ("a", "c"): {"host3": 10.0}})
    (ab_name, ab, ab_spread), (ac_name, ac, ac_spread) = _rows(now, before, 2.0)
    assert ab_name == "a -> b" and ab.requests == 10 and ab.rate == 5.0 and ab.success == 0.5
    assert _fmt_spread(ab_spread) == "host2 5, host3 5"
    assert ac.requests == 10 and not ac.mtls and _fmt_spread(ac_spread) == "host3 10"
    (_, missing, spread), _ = _rows(Scrape(None, {}, "down"), None, 1.0)
    assert missing is None and _fmt_spread(spread) == "-"


def test_traffic_counts_quantiles():
    c = Counts()
    for ms in [1] * 50 + [7] * 49 + [400]:
        c.record(200, ms / 1000)
    # 50 in (0, 1 ms], 49 in (6, 8 ms], 1 in (250, 500 ms]: interpolated like the proxy's histograms.
    assert c.ok == 100 and c.quantile(0.5) == pytest.approx(0.001)
    assert c.quantile(0.99) == pytest.approx(0.008)
    assert c.quantile(0.75) == pytest.approx(0.006 + 0.002 * 25 / 49)
    assert c.to_json()["p99_ms"] == 8.0


# --- apps and ports ----------------------------------------------------------------------------------------


def test_frontend_fans_out_over_keep_alive_and_reports_failures():
    async def main() -> None:
        backend = Backend("b", "b-1", work_ms=0)
        srv = await asyncio.start_server(lambda r, w: serve_connection(r, w, backend.handle), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        # The backend answers proxy-form requests too, so it stands in for the proxy here.
        front = Frontend("a-1", f"127.0.0.1:{port}", ["b", "c"], "/work", timeout=5)
        fsrv = await asyncio.start_server(lambda r, w: serve_connection(r, w, front.handle), "127.0.0.1", 0)
        conn = Connection("127.0.0.1", fsrv.sockets[0].getsockname()[1])
        for _ in range(3):
            resp = await conn.request("GET", "/")
            assert resp.status == 200
        doc = json.loads(resp.body)
        assert doc["calls"]["b"]["body"]["path"] == "http://b/work"
        assert doc["calls"]["c"]["body"]["instance"] == "b-1"
        assert conn.opened == 1 and len(front.pool._idle) == 2  # keep-alive on both legs
        assert (await conn.request("GET", "/nope")).status == 404

        front.path = "/status/503"
        resp = await conn.request("GET", "/")
        assert resp.status == 502 and json.loads(resp.body)["failed"] == ["b", "c"]
        srv.close()
        await srv.wait_closed()
        front.pool.close()
        front.path = "/work"
        resp = await conn.request("GET", "/")  # the "proxy" is gone: 502 naming the error
        assert resp.status == 502 and "Error" in json.loads(resp.body)["calls"]["b"]["error"]
        conn.close()
        fsrv.close()

    asyncio.run(main())


def test_busy_port_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortBusy, match=f"port {port} on 127.0.0.1 \\(host1 proxy admin\\)"):
            check_bindable({f"127.0.0.1:{port}": "host1 proxy admin"})


def test_each_canary_step_is_a_valid_mesh_yaml_that_only_moves_weights():
    from glassmesh.control.config import diff_docs, parse_config, to_doc
    from glassmesh.demo.runner import canary_schedule, canary_yaml, subsets_by_host

    docs = {p: to_doc(parse_config(canary_yaml(p), "mesh.yaml")) for p in (0, 1, 10, 50)}
    diff = diff_docs(docs[0], docs[1])
    assert [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")] == [
        "-      weight: 100", "+      weight: 99", "-      weight: 0", "+      weight: 1"]
    assert subsets_by_host(demo_hosts()) == {"host2": "v1", "host3": "v2", "host4": "v1"}
    assert canary_schedule(20) == [(5.0, 1), (10.0, 10), (15.0, 50)]
    assert [p for _, p in canary_schedule(0)] == [1, 10, 50]
