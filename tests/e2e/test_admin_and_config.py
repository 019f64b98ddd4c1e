"""The admin port (/metrics, /config, /healthz, /ready), snapshot validation at start, and --workers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from typing import Any

import pytest

from tests.e2e.conftest import AB
from tests.e2e.harness import PROXY_CMD, HttpConn, Mesh, Sample, eventually, get, has_series, metric, split

LINK = {"source": "a", "destination": "b"}


def test_health_ready_and_config(ab: AB) -> None:
    r = get(ab.h1.admin, "/healthz")
    assert r.status == 200 and r.body.strip() == b"ok", r
    r = get(ab.h1.admin, "/ready")
    assert r.status == 200, r
    assert isinstance(r.json(), dict)
    for h in (ab.h1, ab.h2):
        r = get(h.admin, "/config")
        assert r.status == 200, r
        got = r.json()
        want = h.snapshot()
        for k in ("version", "host", "trust_domain", "inbound", "admin", "tcp_links"):
            assert got[k] == want[k], k
        assert [s["name"] for s in got["local_services"]] == [s["name"] for s in want["local_services"]]
        assert got["services"][0]["endpoints"] == want["services"][0]["endpoints"]
        assert [s.get("outbound") for s in got["local_services"]] == [s.get("outbound") for s in want["local_services"]]


def test_metrics_per_link(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        for _ in range(5):
            assert c.request("POST", "http://b/x", {"Host": "b"}, b"y" * 1000).status == 200
        assert c.request("GET", "http://b/status/503", {"Host": "b"}).status == 503
        assert c.request("GET", "http://nope/", {"Host": "nope"}).status == 404
        raw = get(ab.h1.admin, "/metrics")
        assert raw.status == 200 and (raw.header("content-type") or "").startswith("text/plain"), raw
        for side, h in (("outbound", ab.h1), ("inbound", ab.h2)):
            eventually(lambda side=side, h=h: _check_link_metrics(side, h.metrics()))
        eventually(lambda: _check_error_metric(ab.h1.metrics()))


def _check_link_metrics(side: str, m: list[Sample]) -> None:
    lk = {"side": side, **LINK}
    assert metric(m, "glassmesh_requests_total", status_class="2xx", **lk) == 5, side
    assert metric(m, "glassmesh_requests_total", status_class="5xx", **lk) == 1, side
    assert metric(m, "glassmesh_request_duration_seconds_count", **lk) == 6, side
    assert metric(m, "glassmesh_request_duration_seconds_sum", **lk) > 0, side
    assert has_series(m, "glassmesh_request_duration_seconds_bucket", le="+Inf", **lk), side
    assert metric(m, "glassmesh_bytes_total", direction="request", **lk) >= 5000, side
    assert metric(m, "glassmesh_bytes_total", direction="response", **lk) > 0, side
    assert has_series(m, "glassmesh_open_connections", **lk), side
    assert metric(m, "glassmesh_open_connections", **lk) >= 1, f"{side}: the pooled link is open"
    assert metric(m, "glassmesh_tls_handshakes_total", **lk) >= 1, side
    mtls = [s for s in m if s.name == "glassmesh_link_mtls" and all(s.labels.get(k) == v for k, v in lk.items())]
    assert mtls and mtls[0].value == 1 and mtls[0].labels.get("tls_version", "").startswith("TLSv1."), mtls
    assert metric(m, "glassmesh_snapshot_version") == 1, side


def _check_error_metric(m: list[Sample]) -> None:
    assert metric(m, "glassmesh_mesh_errors_total", side="outbound", reason="unknown_service") == 1


# --------------------------------------------------------------------------- snapshot validation


def _valid_snapshot(mesh: Mesh) -> dict[str, Any]:
    h1 = mesh.add_host("host1")
    h1.client("a")
    h1.tcp_link("a", "db")
    h1.set_service("db", [("127.0.0.1:4143", "host2")], protocol="tcp")
    h1.set_service("b", [("127.0.0.1:4143", "host2")])
    return h1.snapshot()


def _run_proxy(mesh: Mesh, snap: dict[str, Any] | str, name: str) -> tuple[int | None, str]:
    path = mesh.root / f"{name}.json"
    path.write_text(snap if isinstance(snap, str) else json.dumps(snap))
    p = mesh.spawn(f"proxy {name}", [*PROXY_CMD, "--config", str(path)])
    p.expect_exit()  # a bad config: it is meant to exit with an error
    try:
        code = p.popen.wait(20)
    except subprocess.TimeoutExpired:
        code = None
    p.stop()
    return code, p.log_path.read_text(errors="replace")


def _mutate(snap: dict[str, Any], case: str) -> dict[str, Any] | str:
    s = json.loads(json.dumps(snap))
    if case == "unknown_top_level_field":
        s["bogus_knob"] = 1
    elif case == "unknown_nested_field":
        s["local_services"][0]["colour"] = "blue"
    elif case == "wrong_type_version":
        s["version"] = "one"
    elif case == "wrong_type_inbound":
        s["inbound"] = 4143
    elif case == "bad_address":
        s["admin"] = "nowhere"
    elif case == "tcp_link_to_unknown_service":
        s["tcp_links"][0]["destination"] = "nosuchdb"
    elif case == "tcp_link_to_http_service":
        s["tcp_links"][0]["destination"] = "b"
    elif case == "missing_field":
        del s["host"]
    elif case == "not_json":
        return "{ this is not json"
    return s


CASES = {
    "unknown_top_level_field": ["bogus_knob"],
    "unknown_nested_field": ["colour", "local_services[0]"],
    "wrong_type_version": ["version"],
    "wrong_type_inbound": ["inbound"],
    "bad_address": ["admin"],
    "tcp_link_to_unknown_service": ["tcp_links[0].destination", "nosuchdb"],
    "tcp_link_to_http_service": ["tcp_links[0].destination"],
    "missing_field": ["host"],
    "not_json": ["JSON"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_snapshot_is_refused_naming_the_field(mesh: Mesh, case: str) -> None:
    code, out = _run_proxy(mesh, _mutate(_valid_snapshot(mesh), case), case)
    assert code is not None, f"the proxy started with a bad snapshot ({case}):\n{out}"
    assert code != 0, out
    for needle in CASES[case]:
        assert needle in out, f"the error should name {needle!r}:\n{out}"
    assert "Traceback" not in out, f"a bad snapshot is a clear error, not a crash:\n{out}"


def test_missing_cert_file_is_refused(mesh: Mesh) -> None:
    snap = _valid_snapshot(mesh)
    snap["local_services"][0]["cert"] = "certs/nope.pem"
    code, out = _run_proxy(mesh, snap, "missing-cert")
    assert code not in (None, 0), out
    assert "nope.pem" in out, out


def test_cli_help_lists_flags() -> None:
    out = subprocess.run([*PROXY_CMD, "--help"], capture_output=True, text=True, timeout=30,
                         env=dict(os.environ), check=False)
    assert out.returncode == 0, out.stderr
    assert "--config" in out.stdout and "--workers" in out.stdout


# --------------------------------------------------------------------------- workers


def _owner_pids(pids: list[int], local: str) -> dict[int, int]:
    """How many established TCP connections to `local` (ip:port) each pid holds."""
    ip, port = split(local)
    want = f"{int.from_bytes(socket.inet_aton(ip), 'little'):08X}:{port:04X}"  # little-endian hosts
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            parts = line.split()
            if parts[1] == want and parts[3] == "01":  # ESTABLISHED
                inodes.add(parts[9])
    out: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                out[pid] = out.get(pid, 0) + 1
    return out


def test_workers_serve_traffic(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start(workers=2)
    assert h1.proxy is not None
    assert len(h1.proxy.pids()) >= 2, f"--workers 2 should run worker processes: {h1.proxy.pids()}"
    errors: list[str] = []
    conns: list[HttpConn] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            c = HttpConn(h1.outbound("a"))
            with lock:
                conns.append(c)
            for j in range(5):
                r = c.request("GET", f"http://b/{i}/{j}", {"Host": "b"})
                assert r.status == 200, r
        except Exception as e:  # collected and reported below
            errors.append(f"client {i}: {e!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors, errors
        owners = _owner_pids(h1.proxy.pids(), h1.outbound("a"))
        print(f"client connections per proxy pid: {owners}")
        assert sum(owners.values()) >= 24, owners
        assert len(owners) >= 2, f"all connections went to one worker: {owners}"
    finally:
        for c in conns:
            c.close()


def test_ready_only_when_listening(mesh: Mesh) -> None:
    """/ready answers 200 only once the listeners accept connections."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start()
    for addr in (h1.outbound("a"), h1.inbound, h2.inbound):
        socket.create_connection(split(addr), timeout=2).close()
