"""The Grafana dashboard and the Prometheus rules in deploy/ work against a real mesh.

A control plane and three joined proxies run (a on host1 calls b on host2 and
host3; b@host3 answers every request 503). Traffic is driven through host1:
b's route retries 503 and its instances take turns, so every caller gets 200
while host3 fails, is retried around and ejected; a call to a name that is not in the mesh is an error. Then
the live /metrics of the proxies and of the control plane are scraped, and
every metric the dashboard and the rules name must be there. Where Debian's
`prometheus` is installed, a real Prometheus scrapes that mesh with README's
scrape config (the control plane over mTLS with a read-only operator
credential) and loads the rules: every target is up, every rule evaluates
without error, and the dashboard's main panels have data. `promtool check
rules` checks the rules, and, as recording rules, every dashboard query.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import (
    REPO,
    HttpConn,
    Mesh,
    eventually,
    fresh_ip,
    get,
    metric,
    parse_metrics,
    wait_port,
)
from tests.e2e.test_control_join import Control, free_port, join_args, wait_ready

APP_PORT = 18080
DASHBOARD = REPO / "deploy" / "grafana" / "glassmesh.json"
RULES = REPO / "deploy" / "prometheus" / "glassmesh-rules.yml"
# Names made by Prometheus itself (the scrape), not by glassmesh.
PROMETHEUS_OWN = {"up"}

MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: {port}
    balance: round_robin
    routes:
      - name: all
        retry: {{attempts: 2, on_status: [503]}}
    outlier: {{consecutive_failures: 3, base_ejection_ms: 30000, max_ejection_ms: 60000, max_ejection_percent: 50}}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
  - {{name: host3, address: "{ip3}:4143", services: [b]}}
"""


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []
    for p in doc["panels"]:
        for t in p.get("targets", []):
            exprs.append(t["expr"])
    for v in doc["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            exprs.append(q["query"])
    return exprs


def rule_queries() -> list[str]:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values()) reads."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values are not names
    names = set(re.findall(r"\b((?:glassmesh|process)_[a-z0-9_]+|up)\b", expr))
    labels = set(re.findall(r"\b([a-z_]+)\s*(?:=~|!=|=|!~)", expr))
    return names - labels


def exposed(text: str) -> set[str]:
    """Sample names in a /metrics page, and those of the families it declares (a labelled counter with no
    series yet, such as tcp-link failures in a mesh without tcp links, is declared by its # TYPE line)."""
    names = {s.name for s in parse_metrics(text)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(kind, [""])
        names |= {name + x if not name.endswith(x) else name for x in suffixes}
    return names


def prometheus_reads_the_mesh(mesh: Mesh, cp: Control, admins: list[str], tmp: Path) -> None:
    """A real Prometheus with README's scrape config (the control plane over mTLS with a read-only operator
    credential) and the shipped rules: every target up, every rule evaluated without error, every dashboard
    query answered, and the main panels with data."""
    import urllib.parse
    import urllib.request

    import yaml

    cred = tmp / "prometheus.pem"  # one PEM: certificate, key and the mesh CA
    r = cp.cli("ca", "issue", "--dir", str(cp.data / "ca"), "--operator", "prometheus", "--role", "read-only",
               "--out", str(cred))
    assert r.returncode == 0 and cred.exists(), r.stderr
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "glassmesh-proxy", "static_configs": [{"targets": admins}]},
            {"job_name": "glassmesh-control", "scheme": "https",
             "tls_config": {"cert_file": str(cred), "key_file": str(cred), "ca_file": str(cred),
                            "server_name": "control.glassmesh.internal"},
             "static_configs": [{"targets": [f"127.0.0.1:{cp.port}"]}]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = mesh.spawn("prometheus", ["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"])
    wait_port(f"127.0.0.1:{port}", prom, timeout=30)

    def api(path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.loads(resp.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def all_up() -> None:
        got = {(x["metric"]["job"], x["metric"]["instance"]): x["value"][1] for x in api("/api/v1/query", query="up")["result"]}
        assert len(got) == 4 and set(got.values()) == {"1"}, got

    def ready() -> None:
        assert get(f"127.0.0.1:{port}", "/-/ready").status == 200

    eventually(ready, timeout=30)
    eventually(all_up, timeout=30)

    def rules_evaluated() -> None:
        rules = [r for g in api("/api/v1/rules")["groups"] for r in g["rules"]]
        assert len(rules) == len(rule_queries()) and all(r["health"] == "ok" for r in rules), [
            (r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"] or rules

    eventually(rules_evaluated, timeout=30)
    doc = json.loads(DASHBOARD.read_text())
    with_data = ["Requests per second by link", "Success rate by link (not 5xx)", "p99 latency by link",
                 "Responses by status code", "Mesh errors callers got, by hop and reason", "Retries by reason",
                 "Endpoint p99 latency (per try)", "Endpoint failure share", "Ejections",
                 "Snapshot age (0 while watching the control plane)", "Certificate time left",
                 "CPU (all of a proxy's processes)", "Resident memory (all of a proxy's processes)",
                 "Replicas up", "Hosts behind their latest snapshot", "Outage budget (earliest certificate expiry)"]

    def panels_have_data() -> None:  # rate() needs two scrapes in its window
        answered: dict[str, int] = {}
        for p in doc["panels"]:
            for t in p.get("targets", []):
                n = len(api("/api/v1/query", query=as_promql(t["expr"]))["result"])
                answered[p["title"]] = answered.get(p["title"], 0) + n
        assert not [t for t in with_data if not answered.get(t)], answered

    eventually(panels_have_data, timeout=30)


def as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by what they stand for (all sources, 5 m)."""
    return (expr.replace("$__rate_interval", "5m").replace("$source", ".*").replace("$destination", ".*")
            .replace("$proxy_job", "glassmesh-proxy").replace("$control_job", "glassmesh-control"))


def as_recording_rules(exprs: list[str]) -> str:
    """Dashboard queries as a rules file, Grafana's variables replaced by what they stand for, for promtool."""
    import yaml

    rules = []
    for i, e in enumerate(exprs):
        if e.startswith("label_values("):
            m = re.match(r"label_values\((.*), *\w+\)$", e)
            assert m, e
            e = m.group(1)
        e = as_promql(e)
        assert "$" not in e, e
        rules.append({"record": f"dashboard:query:{i}", "expr": e})
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_dashboard_and_rules_read_only_metrics_a_live_mesh_exposes(mesh: Mesh, tmp_path: Path) -> None:
    cp = Control(mesh)
    ip1, ip2, ip3 = fresh_ip(), fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2, ip3=ip3), "author": "test"})
    apps = [mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2"),
            mesh.start_app("http", f"{ip3}:{APP_PORT}", "b3", extra=["--fail-status", "503"])]
    procs = {h: mesh.spawn(f"proxy {h}", join_args(cp, cp.add_host(h, svc), mesh.root / h))
             for h, svc in (("host1", "a"), ("host2", "b"), ("host3", "b"))}
    admins = {"host1": f"{ip1}:4191", "host2": f"{ip2}:4191", "host3": f"{ip3}:4191"}
    for h, p in procs.items():
        wait_ready(p, admins[h])

    def both_b_in_host1s_snapshot() -> None:
        eps = json.loads(get(admins["host1"], "/config").body)["services"]
        assert sorted(e["host"] for s in eps if s["name"] == "b" for e in s.get("endpoints", [])) == ["host2", "host3"]

    eventually(both_b_in_host1s_snapshot, timeout=30)

    # Traffic: every answer is 200 (host3's 503s are retried on host2) until host3 is ejected.
    statuses = []
    with HttpConn(f"{ip1}:4140", timeout=10) as c:
        for i in range(60):
            statuses.append(c.request("GET", f"/items/{i}", {"Host": "b"}).status)
        assert c.request("GET", "/", {"Host": "nosuch"}).status == 404  # a mesh error: unknown_service
    assert statuses == [200] * 60, statuses

    text1 = get(admins["host1"], "/metrics").body.decode()
    text3 = get(admins["host3"], "/metrics").body.decode()
    m1, m3 = parse_metrics(text1), parse_metrics(text3)
    assert metric(m1, "glassmesh_retries_total", side="outbound", source="a", destination="b", reason="status") >= 3
    assert metric(m1, "glassmesh_endpoint_ejections_total", destination="b", host="host3") >= 1
    assert metric(m1, "glassmesh_endpoint_failures_total", destination="b", host="host3") >= 3
    assert metric(m1, "glassmesh_endpoint_latency_seconds_count", destination="b", host="host2") >= 60
    # The retries that succeeded are not mesh errors; the unknown name is, made at host1's outbound.
    errs = [(s.labels, s.value) for s in m1 if s.name == "glassmesh_mesh_errors_total"]
    assert errs == [({"side": "outbound", "source": "a", "destination": "", "reason": "unknown_service",
                      "hop": "host1/outbound"}, 1.0)], errs
    assert metric(m1, "glassmesh_requests_total", side="outbound", destination="b", code="200") == 60
    assert metric(m3, "glassmesh_requests_total", side="inbound", source="a", destination="b", code="503",
                  status_class="5xx") >= 3
    assert metric(m1, "glassmesh_certificate_expiry_timestamp_seconds", identity="service/a") > 0
    assert metric(m1, "process_cpu_seconds_total") > 0 and metric(m1, "glassmesh_processes") == 1

    def control_has_outage_budget() -> None:
        assert "glassmesh_control_outage_budget_seconds" in cp.metrics()

    eventually(control_has_outage_budget, timeout=30)
    if shutil.which("prometheus"):
        prometheus_reads_the_mesh(mesh, cp, list(admins.values()), tmp_path)
    else:
        print("prometheus is absent: the real-Prometheus part of this test did not run")

    # Both instances of b go away: removing b's last endpoint is a change the guard holds.
    for app in apps:
        app.proc.stop()

    def held() -> None:
        assert 'glassmesh_control_held_changes{service="b"} 1.0' in cp.metrics()

    eventually(held, timeout=30)
    control_text = cp.metrics()
    control = parse_metrics(control_text)
    assert metric(control, "process_resident_memory_bytes") > 0
    assert metric(control, "glassmesh_control_held_services") == 1
    assert metric(control, "glassmesh_control_holds_total", service="b") == 1

    live = exposed(text1) | exposed(text3) | exposed(control_text)
    used = {n for e in dashboard_queries() + rule_queries() for n in metric_names(e)}
    assert "glassmesh_mesh_errors_total" in used and "glassmesh_control_held_services" in used, used
    missing = sorted(used - live - PROMETHEUS_OWN)
    assert not missing, f"the dashboard or the rules read metrics no live /metrics has: {missing}"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is absent (Debian's `prometheus` package provides it; "
                           "scripts/install-test-deps.sh installs it)")
def test_promtool_checks_the_rules_and_every_dashboard_query(tmp_path: Path) -> None:
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"SUCCESS: \d+ rules found", r.stdout + r.stderr), r.stdout + r.stderr
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(as_recording_rules(dashboard_queries()))
    r = subprocess.run(["promtool", "check", "rules", str(queries)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_is_importable_json() -> None:
    """What Grafana's import needs: a datasource variable every query uses, unique panel ids, grid positions."""
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "glassmesh" and doc["title"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in doc["templating"]["list"])
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"], (p["title"], t)
