"""`glassmesh check`'s verdicts from what the replicas answered (cli/check_cmd.judge), apart from the network.

The e2e test (tests/e2e/test_check.py) proves the same lines against a real
mesh; these pin the thresholds and wording of each check.
"""

from __future__ import annotations

from typing import Any

from glassmesh.cli.check_cmd import DAY, Answer, Check, judge
from glassmesh.control.config import parse_config
from glassmesh.control.doctor import config_warnings
from glassmesh.model.snapshot import Endpoint, Service, Snapshot

NOW = 1_800_000_000.0


def host(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "running": 5, "latest": 5, "in_sync": True, "behind_s": 0.0, "last_seen_s": 1.0,
            "last_reject": None, "proxy": {"wire": 1, "build": "0.1.0", "features": [], "refused": None},
            "lacks": [], "hot_path": "mypyc", **kw}


def doc(**status: Any) -> dict[str, Any]:
    st = {"config_version": 3, "replicas": [{"id": "r1", "listen": "127.0.0.1:4200"}], "compile_error": None,
          "hosts": [host("host1"), host("host2")], "held": [], "unhealthy": [], **status}
    return {"replica": "r1", "now": NOW, "ca": {"not_after": NOW + 3650 * DAY}, "leaf_hours": 24.0, "status": st,
            "hosts": [{"name": "host1", "certs": {"host": NOW + 20 * 3600}, "clock_skew_s": 0.01, "clock_at": NOW,
                       "asks": {"processes": [{"pid": 1, "snapshot_version": 5}]}},
                      {"name": "host2", "certs": {"host": NOW + 20 * 3600}, "clock_skew_s": -0.2, "clock_at": NOW,
                       "asks": {"processes": [{"pid": 2, "snapshot_version": 5}, {"pid": 3, "snapshot_version": 5}]}}],
            "warnings": []}


def answer(d: dict[str, Any] | None, url: str = "https://127.0.0.1:4200", error: str = "") -> Answer:
    return Answer(url, d, error, sent=NOW - 0.01, received=NOW + 0.01, cert_not_after=NOW + 300 * DAY)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_healthy_mesh_is_all_ok() -> None:
    checks = judge([answer(doc())], NOW, NOW + 20 * DAY)
    assert [c.state for c in checks] == ["ok"] * len(checks), checks
    names = [c.name for c in checks]
    assert names == ["control plane r1", "clocks", "CA certificate", "certificate of control plane r1",
                     "your operator credential", "host certificates", "snapshots", "ask channel",
                     "rejected snapshots", "held changes", "config", "hot path"]


def test_an_unreachable_replica_fails_with_a_fix_and_the_others_still_judge() -> None:
    checks = judge([answer(None, "https://127.0.0.1:4300", "cannot connect: Connection refused"), answer(doc())], NOW)
    first = checks[0]
    assert (first.name, first.state) == ("control plane https://127.0.0.1:4300", "fail")
    assert "Connection refused" in first.detail and "start that replica" in first.fix
    assert by_name(checks)["snapshots"].state == "ok"
    assert [c.name for c in judge([answer(None, error="x")], NOW)] == ["control plane https://127.0.0.1:4200"]


def test_clocks_warn_from_two_seconds_and_fail_from_a_minute() -> None:
    d = doc()
    d["hosts"][1]["clock_skew_s"] = 3.5
    c = by_name(judge([answer(d)], NOW))["clocks"]
    assert c.state == "warn" and "host host2 is 3.5 s ahead" in c.detail and "NTP" in c.fix
    d["hosts"][0]["clock_skew_s"] = -90.0
    c = by_name(judge([answer(d)], NOW))["clocks"]
    assert c.state == "fail" and c.detail.startswith("host host1 is 90.0 s behind, host host2 is 3.5 s ahead")
    # The replica's own clock, against this machine's, less the round trip's uncertainty.
    d = doc(now=NOW)
    d["now"] = NOW + 120
    c = by_name(judge([answer(d)], NOW))["clocks"]
    assert c.state == "fail" and "replica r1 (against this machine) is 120.0 s ahead" in c.detail
    d["hosts"][0]["clock_skew_s"] = None
    assert "no reading yet from host1" in by_name(judge([answer(d)], NOW))["clocks"].detail


def test_certificates_near_expiry() -> None:
    d = doc()
    d["ca"]["not_after"] = NOW + 10 * DAY
    d["hosts"][0]["certs"] = {"host": NOW + 3600, "service/a": NOW - 60}  # expired
    d["hosts"][1]["certs"] = {"host": NOW + 6 * 3600}  # past half of a 24 h life: renewal is late
    a = answer(d)
    a.cert_not_after = NOW + 20 * DAY
    c = by_name(judge([a], NOW, NOW + 2 * DAY))
    assert c["CA certificate"].state == "fail" and "10 days from now" in c["CA certificate"].detail
    assert c["certificate of control plane r1"].state == "warn" and "restart" in c["certificate of control plane r1"].fix
    assert c["your operator credential"].state == "warn"
    hosts = c["host certificates"]
    assert hosts.state == "fail" and "host1 (service/a expired" in hosts.detail and "host2" in hosts.detail
    assert "renewal is late" in hosts.detail and "renews its certificates at half life" in hosts.fix
    d["hosts"][0]["certs"] = {}
    assert "given by hand (not checked): host1" in by_name(judge([answer(d)], NOW))["host certificates"].detail


def test_snapshots_rejects_held_and_hot_path() -> None:
    d = doc(hosts=[host("host1", running=4, in_sync=False, behind_s=30.0),
                   host("host2", last_reject={"version": 5, "reason": "cannot listen on\n1.2.3.4:80", "past": False}),
                   host("host3", running=0, last_seen_s=None, hot_path="python")],
            held=[{"service": "b", "cause": "would remove 2 of 2 endpoints", "since_s": 3}])
    c = by_name(judge([answer(d)], NOW))
    assert c["snapshots"].state == "fail"
    assert "host3 has never reported" in c["snapshots"].detail and "host1 runs v4, latest v5" in c["snapshots"].detail
    assert c["rejected snapshots"].state == "fail"
    assert "host2 rejected v5: cannot listen on 1.2.3.4:80" in c["rejected snapshots"].detail
    assert c["held changes"].state == "fail" and "glassmesh release SERVICE" in c["held changes"].fix
    assert c["hot path"].state == "warn" and "host3 (python)" in c["hot path"].detail
    # A host only just behind (a push in flight) is a warning, not a failure.
    d = doc(hosts=[host("host1", running=4, in_sync=False, behind_s=1.0)])
    assert by_name(judge([answer(d)], NOW))["snapshots"].state == "warn"


def test_ask_channel_names_proxies_that_do_not_answer_and_workers_that_disagree() -> None:
    ok = by_name(judge([answer(doc())], NOW))["ask channel"]
    assert ok.state == "ok" and ok.detail.startswith("2 proxies answer (3 serving processes)")
    d = doc()
    d["hosts"][0]["asks"] = None
    d["hosts"][1]["asks"]["processes"][1]["snapshot_version"] = 4
    c = by_name(judge([answer(d)], NOW))["ask channel"]
    assert c.state == "warn" and "host1 (not polling for asks)" in c.detail
    assert "host2's processes serve v4, v5 (acked v5)" in c.detail
    # A second replica that the proxy does poll answers for it.
    d2 = doc(replicas=[])
    d2["replica"] = "r2"
    assert by_name(judge([answer(d), answer(d2, "https://127.0.0.1:4300")], NOW))["ask channel"].detail.count(
        "not polling") == 0


def test_compile_error_fails_and_warnings_warn() -> None:
    d = doc(compile_error="store: down", unhealthy=[{"service": "b", "host": "host2", "address": "1.2.3.4:80",
                                                     "detail": "connect refused"}])
    d["warnings"] = [{"what": "service c has no healthy endpoint", "fix": "start one"}]
    checks = judge([answer(d)], NOW)
    config = [c for c in checks if c.name in ("config", "instances")]
    assert [(c.name, c.state) for c in config] == [("config", "fail"), ("config", "warn"), ("instances", "warn")]
    assert "connect refused" in config[2].detail


MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: 8080
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    routes:
      - name: all
        split: [{subset: v1, weight: 99}, {subset: v2, weight: 1}]
  - name: c
    port: 8081
hosts:
  - {name: host1, address: "127.0.0.1:4143", services: [a]}
  - {name: host2, address: "127.0.0.2:4143", services: [{name: b, labels: {version: v1}}, c]}
  - {name: host3, address: "127.0.0.3:4143", services: [{name: b, labels: {version: v2}}]}
"""


def test_config_warnings_name_services_without_endpoints_and_empty_canaries() -> None:
    cfg = parse_config(MESH)
    b = Service(name="b", endpoints=[Endpoint(address="127.0.0.2:4143", host="host2", labels={"version": "v1"})])
    snap = Snapshot(version=1, host="host1", trust_domain="t", trust_bundle="ca.pem", services=[b, Service(name="c")])
    ws = config_warnings(cfg, {"host1": snap}, {"host2": "", "host3": "accepted with a warning: x"}, {"host1"})
    whats = [w["what"] for w in ws]
    assert whats[0].startswith("route all of b sends weight 1 to subset v2, which has no healthy endpoint")
    assert whats[1] == "service c has no healthy endpoint: its callers get 503 no_endpoints"
    assert "hosts that list it: host2" in ws[1]["fix"]
    assert whats[2] == "host host3 took its snapshot with a warning: accepted with a warning: x"
    assert whats[3].startswith("host host1 talks to the control plane over plain HTTP")
    assert len(ws) == 4  # a (a client only) is not expected to have endpoints


def test_no_config_yet_warns() -> None:
    c = by_name(judge([answer(doc(config_version=0, hosts=[]))], NOW))["config"]
    assert (c.state, c.detail, c.fix) == ("warn", "no config applied yet: the mesh has no services",
                                          "`glassmesh apply -f mesh.yaml`")
