"""Metrics and logs as a platform team reads them, from real proxies and a real control plane.

- A retry that succeeded is counted in glassmesh_retries_total and in no mesh-error series of the
  caller's proxy; an error a peer's inbound made and the caller's proxy passed on is counted there
  with the hop that made it (and at that inbound, where it was made).
- Access log lines carry the trace id (the request's traceparent, or the one the proxy made, the same
  on every hop), the endpoint, body bytes both ways, the attempts, and the hop of a mesh error.
- The daemons' log lines have a UTC time and a level; `--log-format json` makes each one a JSON object.
- With --workers, process_* describe the whole proxy: the supervisor and its workers, summed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from tests.e2e.harness import HttpConn, Mesh, eventually, get, metric, parse_metrics, wait_port
from tests.e2e.test_control_join import CLI, free_port

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TRACE = "0af7651916cd43dd8448eb211c80319c"


def log_lines(path: Path, n: int) -> list[dict[str, Any]]:
    def enough() -> None:
        assert path.exists() and len(path.read_text().splitlines()) >= n, path.read_text() if path.exists() else ""

    eventually(enough)
    return [json.loads(line) for line in path.read_text().splitlines()]


def mesh_errors(samples: list[Any]) -> list[tuple[dict[str, str], float]]:
    return sorted(((s.labels, s.value) for s in samples if s.name == "glassmesh_mesh_errors_total"),
                  key=lambda x: sorted(x[0].items()))


def test_a_retry_that_succeeded_is_no_mesh_error_and_a_passed_on_error_names_its_hop(mesh: Mesh) -> None:
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    h2.http_app("b")
    b3 = h3.http_app("b")
    h2.add_instance("down", f"{h2.ip}:{h2.app_port()}")  # nothing listens there
    log1 = mesh.root / "host1-access.log"
    h1.proxy_args = ["--access-log", str(log1)]
    mesh.start()
    b3.proc.stop()  # host3's proxy is up, its app is gone: host3/inbound answers connect_refused
    with HttpConn(h1.outbound("a")) as c:
        for i in range(20):
            assert c.request("GET", f"http://b/{i}", {"Host": "b"}).status == 200
        down = c.request("GET", "http://down/", {"Host": "down"})
    assert down.status == 502 and down.header("glassmesh-error") == "connect_refused; hop=host2/inbound"

    m1, m3 = h1.metrics(), h3.metrics()
    assert metric(m1, "glassmesh_retries_total", side="outbound", source="a", destination="b",
                  reason="connect_refused") >= 1
    # The caller's proxy counts one mesh error: the one its app got, made by host2's inbound.
    assert mesh_errors(m1) == [({"side": "outbound", "source": "a", "destination": "down",
                                 "reason": "connect_refused", "hop": "host2/inbound"}, 1.0)]
    assert metric(m1, "glassmesh_requests_total", side="outbound", destination="down", code="502",
                  status_class="5xx") == 1
    assert metric(m1, "glassmesh_requests_total", side="outbound", destination="b", code="200") == 20
    # Where the errors were made, they are counted too, on the inbound side (the caller may retry those).
    assert metric(h2.metrics(), "glassmesh_mesh_errors_total", side="inbound", source="a", destination="down",
                  reason="connect_refused", hop="host2/inbound") == 1
    assert metric(m3, "glassmesh_mesh_errors_total", side="inbound", source="a", destination="b",
                  reason="connect_refused", hop="host3/inbound") >= 1

    lines = log_lines(log1, 21)
    retried = [r for r in lines if r["attempts"] == 2]
    assert retried and all(r["status"] == 200 and r["endpoint_host"] == "host2" and "mesh_error" not in r
                           for r in retried), lines
    assert retried[0]["endpoint"] == h2.inbound
    last = lines[-1]
    assert (last["destination"], last["status"], last["mesh_error"], last["error_hop"], last["endpoint"],
            last["attempts"]) == ("down", 502, "connect_refused", "host2/inbound", h2.inbound, 1), last


def test_access_log_has_trace_id_endpoint_bytes_and_attempts(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    b = h2.http_app("b")
    log1, log2 = mesh.root / "host1-access.log", mesh.root / "host2-access.log"
    h1.proxy_args = ["--access-log", str(log1)]
    h2.proxy_args = ["--access-log", str(log2)]
    mesh.start()
    body = b"x" * 1000
    with HttpConn(h1.outbound("a")) as c:
        traced = c.request("POST", "http://b/traced", {"Host": "b", "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
                           body)
        untraced = c.request("GET", "http://b/untraced", {"Host": "b", "x-request-id": "rid-7"})
        missing = c.request("GET", "http://nosuch/", {"Host": "nosuch", "x-request-id": "rid-8"})
    assert (traced.status, untraced.status, missing.status) == (200, 200, 404)

    out = log_lines(log1, 3)
    inb = log_lines(log2, 2)
    t, u, n = out
    assert t["trace_id"] == TRACE and inb[0]["trace_id"] == TRACE
    assert t["bytes_received"] == 1000 and t["bytes_sent"] == len(traced.body) > 0
    assert inb[0]["bytes_received"] == 1000 and inb[0]["bytes_sent"] == len(traced.body)
    assert (t["endpoint"], t["endpoint_host"], t["attempts"]) == (h2.inbound, "host2", 1)
    assert inb[0]["endpoint"] == b.addr and inb[0]["source"] == "a"
    # No traceparent: the proxy made one and passed it on, so both hops log the same trace id.
    assert re.fullmatch(r"[0-9a-f]{32}", u["trace_id"]) and u["trace_id"] == inb[1]["trace_id"], (u, inb[1])
    assert u["request_id"] == "rid-7" and u["bytes_received"] == 0
    # An error before any hop: no trace, the request id stands in; no endpoint was chosen.
    assert (n["trace_id"], n["mesh_error"], n["error_hop"]) == ("rid-8", "unknown_service", "host1/outbound")
    assert "endpoint" not in n


def test_logs_have_utc_time_and_level_and_a_json_option(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    h1.proxy_args = ["--log-format", "json"]
    mesh.start()
    assert h1.proxy is not None and h2.proxy is not None
    text = h2.proxy.log_text()
    assert re.search(rf"^{STAMP} INFO glassmesh proxy: host host2 serving snapshot version 1: ", text, re.M), text
    lines = [json.loads(x) for x in h1.proxy.log_text().splitlines()]
    assert lines and all(re.fullmatch(STAMP, x["ts"]) and x["logger"] == "glassmesh proxy" and x["pid"] > 0
                         for x in lines), lines
    assert any(x["level"] == "info" and x["msg"].startswith("host host1 serving snapshot version 1")
               for x in lines), lines
    # A bad snapshot on SIGHUP is a warning.
    assert h1.snapshot_path is not None
    h1.snapshot_path.write_text("{not json")
    os.kill(h1.proxy.pid, 1)

    def warned() -> None:
        got = [json.loads(x) for x in h1.proxy.log_text().splitlines()]  # type: ignore[union-attr]
        assert any(x["level"] == "warning" and x["msg"].startswith("snapshot rejected") for x in got), got

    eventually(warned)

    # The control plane, told by its environment variable (every flag has one): its start-up lines on
    # stdout and its log on stderr, all JSON.
    port, pport = free_port(), free_port()
    cp = mesh.spawn("control", [*CLI, "control", "--data", str(mesh.root / "control"), "--listen",
                                f"127.0.0.1:{port}", "--proxy-listen", f"127.0.0.1:{pport}"],
                    env={"GLASSMESH_CONTROL_LOG_FORMAT": "json"})
    wait_port(f"127.0.0.1:{pport}", cp)

    def started() -> None:
        got = [json.loads(x) for x in cp.log_text().splitlines()]
        assert any(x["msg"].startswith("operator API on https://") and x["logger"] == "glassmesh control"
                   for x in got), got
        assert any(x["logger"].startswith("glassmesh.control") and x["level"] == "info" for x in got), got
        assert all(re.fullmatch(STAMP, x["ts"]) for x in got)

    eventually(started)


def test_process_metrics_sum_a_proxys_supervisor_and_workers(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start(workers=2)
    with HttpConn(h1.outbound("a")) as c:
        for _ in range(20):
            assert c.request("GET", "http://b/", {"Host": "b"}).status == 200
    assert h1.proxy is not None
    pids = h1.proxy.pids()
    m = parse_metrics(get(h1.admin, "/metrics").body.decode())
    assert metric(m, "glassmesh_processes") == 3 == len(pids), pids
    rss = sum(_rss(p) for p in pids)
    got = metric(m, "process_resident_memory_bytes")
    assert 0.7 * rss < got < 1.3 * rss, (got, rss)
    assert metric(m, "process_cpu_seconds_total") > 0
    start = metric(m, "process_start_time_seconds")
    assert abs(start - _started(h1.proxy.pid)) < 2, (start, _started(h1.proxy.pid))  # the supervisor's
    assert metric(m, "process_open_fds") > 3 * 3  # at least stdin/out/err of each process


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _started(pid: int) -> float:
    """A process's start time in Unix seconds, from /proc as ps computes it."""
    with open(f"/proc/{pid}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")

