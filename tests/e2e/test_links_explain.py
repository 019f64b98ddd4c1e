"""`glassmesh links` and `glassmesh explain` against a running mesh, through the ask channel.

Real processes: `glassmesh control`, three `glassmesh proxy --control` hosts
(host1 runs the caller a; b's v1 instance runs on host2 and its v2 instance,
an app that answers every request 503, on host3), a route `reads` that sends
/items 90/10 to v1/v2 with retries on 503, and steady traffic from a through
host1's outbound. links must show the a -> b link with its real rate,
success below 100% (the v2 share fails), retries, mTLS, and, once b's v2
app is killed, the connect_refused that host3's inbound makes, by hop.
explain must pick the route the proxy picks and show the endpoints as
host1's proxy sees them, with v2's instance ejected.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.e2e.harness import HttpConn, Mesh, fresh_ip
from tests.e2e.operator import cli_env
from tests.e2e.test_control_join import MESH as JOIN_MESH
from tests.e2e.test_control_join import Control as JoinControl
from tests.e2e.test_control_join import call_b, join_args
from tests.e2e.test_control_join import wait_ready as join_ready
from tests.e2e.test_control_watch import APP_PORT, CLI, HEALTH_INTERVAL_S, Topo, b_hosts, wait_for

POLICY = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: {port}
    subsets:
      - {{name: v1, labels: {{version: v1}}}}
      - {{name: v2, labels: {{version: v2}}}}
    routes:
      - name: reads
        match: {{path_prefix: /items, methods: [GET]}}
        split: [{{subset: v1, weight: 90}}, {{subset: v2, weight: 10}}]
        timeout_ms: 2000
        retry: {{attempts: 2, on_status: [503]}}
      - name: rest
        retry: {{attempts: 2, on_status: [503]}}
    outlier: {{consecutive_failures: 5, base_ejection_ms: 1000, max_ejection_ms: 1000}}
    balance: round_robin
  - name: c
    port: {cport}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [{{name: b, labels: {{version: v1}}}}]}}
  - {{name: host3, address: "{ip3}:4143", services: [{{name: b, labels: {{version: v2}}}}]}}
"""


class Calls:
    """a calls b through host1's outbound, ~100 requests/s: 9 of 10 GET /items/N, 1 of 10 GET /other
    (or always `path`)."""

    def __init__(self, outbound: str, path: str = "") -> None:
        self.outbound, self.path = outbound, path
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: HttpConn | None = None
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                conn = conn or HttpConn(self.outbound, timeout=10)
                r = conn.request("GET", self.path or (f"/items/{i}" if i % 10 else "/other"), {"Host": "b"})
                self.statuses.append(r.status)
                if (r.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, EOFError, ValueError):
                self.statuses.append(0)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(0.01)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def topo(mesh: Mesh) -> Topo:
    t = Topo(mesh)
    cp = t.cp
    cp.start()
    cp.apply(POLICY.format(port=APP_PORT, cport=APP_PORT + 1, ip1=t.h1.ip, ip2=t.h2.ip, ip3=t.h3.ip))
    t.b3 = mesh.start_app("http", f"{t.h3.ip}:{APP_PORT}", "b3", extra=["--fail-status", "503"])
    for h in t.hosts():
        h.start(cp.url)
    for h in t.hosts():
        h.wait_ready()
    wait_for(lambda: b_hosts(cp.snapshot("host1")) == ["host2", "host3"], 3 * HEALTH_INTERVAL_S, "both registered")
    want = cp.snapshot("host1")["version"]
    wait_for(lambda: t.h1.ready()["snapshot_version"] >= want, 3, "host1 has both")
    return t


def cli(topo: Topo, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60,
                          env=cli_env(topo.cp.api_url, topo.cp.cred))


def links_json(topo: Topo) -> dict[str, Any]:
    r = cli(topo, "links", "-o", "json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def link(doc: dict[str, Any], source: str, destination: str) -> dict[str, Any]:
    return next(r for r in doc["links"] if (r["source"], r["destination"]) == (source, destination))


def test_links_show_rate_success_latency_mtls_retries_and_mesh_errors_by_hop(topo: Topo) -> None:
    calls = Calls(topo.h1.outbound)
    try:
        wait_for(lambda: len(calls.statuses) > 100, 10, "traffic flows")
        doc = links_json(topo)
        assert doc["hosts"] == ["host1", "host2", "host3"] and doc["missing"] == {}, doc
        ab = link(doc, "a", "b")
        assert doc["links"][0] is not None and (doc["links"][0]["source"], doc["links"][0]["destination"]) == ("a", "b")
        assert ab["rate_rps"] > 10, ab  # ~100/s here; a loaded machine does fewer
        assert 0.5 < ab["success"] < 0.99, ab  # v2's share (10% of /items, and its share of /other) fails
        assert ab["status"]["2xx"] > 0 and ab["status"]["5xx"] > 0, ab
        assert ab["p50_ms"] is not None and ab["p99_ms"] >= ab["p50_ms"], ab
        assert ab["mtls"].startswith("TLSv1."), ab
        assert ab["window_s"] >= 0.9

        # The table: worst link first, the numbers and the matrix.
        table = cli(topo, "links")
        assert table.returncode == 0, table.stderr
        print(table.stdout)
        rows = [ln.split() for ln in table.stdout.splitlines()]
        first = next(r for r in rows if r[:2] == ["a", "b"])
        assert "TLSv1.3" in first and first[3].endswith("%")
        assert "matrix (success, rate)" in table.stdout

        # Route rest tries a 503 again on the other endpoint: host3's 503s (when it is not ejected, 1 s at a time).
        # b's v2 app dies: host3's inbound answers connect_refused until host3's check takes it out.
        assert topo.b3 is not None
        topo.b3.proc.kill()
        seen: dict[str, Any] = {}

        def refused_and_retried() -> bool:
            row = link(links_json(topo), "a", "b")
            if "connect_refused" in row["mesh_errors"].get("host3/inbound", {}):
                seen["errors"] = row
            if row["retries"]:
                seen["retries"] = row
            return len(seen) == 2

        wait_for(refused_and_retried, 20, "host3/inbound's connect_refused and host1's retries show on a -> b")
        print(seen)
        print(cli(topo, "links").stdout)
    finally:
        calls.stop()


def test_watch_redraws_every_interval(topo: Topo) -> None:
    calls = Calls(topo.h1.outbound)
    env = cli_env(topo.cp.api_url, topo.cp.cred)
    p = subprocess.Popen([*CLI, "links", "--watch", "--interval", "1", "-o", "json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(4)
    finally:
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=20)
        calls.stop()
    dec = json.JSONDecoder()
    docs, i = [], 0
    while i < len(stdout.strip()):
        d, i = dec.raw_decode(stdout, i)
        docs.append(d)
        while i < len(stdout) and stdout[i].isspace():
            i += 1
    assert len(docs) >= 2, (stdout, stderr)
    assert docs[-1]["at"] > docs[0]["at"]
    assert all(link(d, "a", "b")["rate_rps"] > 0 for d in docs[1:]), docs
    assert p.returncode == 130 and stderr.strip() == "error: interrupted", stderr
    # For people: rich redraws in place on a terminal; here (a pipe) the last look is printed when it ends.
    p = subprocess.Popen([*CLI, "links", "--watch", "--interval", "1"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=20)
    assert "links at " in stdout and "TLSv1.3" in stdout, (stdout, stderr)
    assert p.returncode == 130, stderr


def test_explain_picks_the_proxys_route_and_shows_live_endpoints(topo: Topo) -> None:
    calls = Calls(topo.h1.outbound)
    try:
        # v2's instance answers 503 to everything: host1's proxy ejects it after 5 in a row.
        wait_for(lambda: calls.statuses.count(503) >= 10, 20, "v2 fails")
    finally:
        calls.stop()
    r = cli(topo, "explain", "a", "b", "--path", "/items/7", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["host"] == "host1" and doc["authorization"]["allowed"] is True
    assert [i["host"] for i in doc["authorization"]["inbound"]] == ["host2", "host3"]
    route = doc["route"]
    assert route["name"] == "reads" and route["not_matched"] == [] and route["match"] == {
        "path_prefix": "/items", "methods": ["GET"]}
    assert [(b["subset"], b["share"], [e["host"] for e in b["endpoints"]]) for b in route["split"]] == [
        ("v1", 0.9, ["host2"]), ("v2", 0.1, ["host3"])]
    assert route["timeout_ms"] == 2000 and route["retry"] == {"attempts": 2, "on_status": [503],
                                                              "connect_failures": True}
    # The certificates in use, as each proxy read them from the files it serves with.
    assert [(c["service"], c["host"], c["source"], c["spiffe_id"]) for c in doc["certificates"]] == [
        ("a", "host1", "proxy", "spiffe://glassmesh.local/service/a"),
        ("b", "host2", "proxy", "spiffe://glassmesh.local/service/b"),
        ("b", "host3", "proxy", "spiffe://glassmesh.local/service/b")]
    assert all(c["not_after"] > time.time() + 3600 for c in doc["certificates"])
    live = {e["host"]: e for e in doc["live"]["endpoints"]}
    assert set(live) == {"host2", "host3"}
    assert live["host3"]["failures"] >= 5 and live["host3"]["ejections"] >= 1, live
    assert live["host2"]["requests"] > 0 and live["host2"]["ejected"] is False

    # Another path, or another method: the default route, as the proxy would pick.
    for args in (["--path", "/other"], ["--path", "/items/7", "--method", "POST"]):
        doc = json.loads(cli(topo, "explain", "a", "b", *args, "-o", "json").stdout)
        assert doc["route"]["name"] == "rest" and doc["route"]["not_matched"] == ["reads"], args
        assert doc["route"]["retry"]["attempts"] == 2 and doc["route"]["timeout_ms"] is None
        assert [b["subset"] for b in doc["route"]["split"]] == [None]  # every endpoint

    # a may not call c: refused at host1's outbound.
    doc = json.loads(cli(topo, "explain", "a", "c", "-o", "json").stdout)
    assert doc["authorization"]["allowed"] is False
    assert doc["authorization"]["outbound"].startswith("403 call_not_allowed")

    # For people.
    table = cli(topo, "explain", "a", "b", "--path", "/items/7")
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    assert "route: reads (path_prefix /items, methods GET)" in table.stdout
    assert "90% to subset v1 (weight 90): host2" in table.stdout
    assert "version=v2" in table.stdout and "endpoints, as host host1's proxy sees them now" in table.stdout

    r = cli(topo, "explain", "a", "nosuch")
    assert r.returncode == 4 and "'nosuch' is not a service" in r.stderr, r.stderr


def test_joined_hosts_and_a_proxy_with_two_workers(mesh: Mesh) -> None:
    """Hosts that joined with tokens (mTLS identities, certificates issued by the control plane, 16 s leaves
    renewed at half life) and a caller with --workers 2: links sums both workers' counters, explain merges
    both workers' endpoint views and reads the certificates the proxies serve with, check sees every process."""
    cp = JoinControl(mesh)
    ip1, ip2 = fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": JOIN_MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2), "author": "test"})
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2")
    t1, t2 = cp.add_host("host1", "a"), cp.add_host("host2", "b")
    p1 = mesh.spawn("proxy host1", [*join_args(cp, t1, mesh.root / "h1"), "--workers", "2"])
    p2 = mesh.spawn("proxy host2", join_args(cp, t2, mesh.root / "h2"))
    join_ready(p1, f"{ip1}:4191")
    join_ready(p2, f"{ip2}:4191")
    wait_for(lambda: call_b(f"{ip1}:4140").status == 200, 15, "a reaches b")
    env = cli_env(cp.api_url, cp.cred)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env)

    calls = Calls(f"{ip1}:4140", path="/hello")
    try:
        wait_for(lambda: len(calls.statuses) > 50, 10, "traffic flows")
        r = run("links", "-o", "json")
        assert r.returncode == 0, r.stderr
        ab = link(json.loads(r.stdout), "a", "b")
        assert ab["rate_rps"] > 10 and ab["success"] == 1.0 and ab["mtls"] == "TLSv1.3", ab
        # Both workers served: their counters are summed (each worker's own would be about half).
        assert ab["seen_at"] == ["host1/outbound", "host2/inbound"]
        r = run("explain", "a", "b", "-o", "json")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
    finally:
        calls.stop()
    assert doc["live"]["processes"] == 2 and [e["host"] for e in doc["live"]["endpoints"]] == ["host2"]
    assert doc["live"]["endpoints"][0]["requests"] > 0
    certs = {(c["service"], c["host"]): c for c in doc["certificates"]}
    assert certs[("a", "host1")]["source"] == "proxy" and certs[("b", "host2")]["source"] == "proxy"
    assert all(time.time() < c["not_after"] < time.time() + 60 for c in certs.values())  # 16 s leaves
    r = run("check")
    print(r.stdout)
    got = {ln[6:].split(":", 1)[0]: ln for ln in r.stdout.splitlines() if ln[:5].strip() in ("ok", "warn", "fail")}
    assert got["ask channel"].startswith("ok    ask channel: 2 proxies answer (3 serving processes)"), r.stdout
    assert got["host certificates"].startswith("ok    host certificates: 2 host(s) valid and renewed on time")
    assert "config" in got and got["config"].startswith("ok    config: version 1: no warnings"), r.stdout
