"""`glassmesh trace REQUEST_ID`: a request's records from the proxies on its path, as one timeline.

A real control plane and three joined hosts: a on host1 (two workers) calls
b on host2; host3 runs c and is never on the path, so it is never asked.
A slow app shows where the time went, a failing one (and a stopped one) which
hop made the error, and the operator route refuses callers without an
operator credential (a host's own identity included).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.e2e.harness import HttpConn, Mesh, fresh_ip
from tests.e2e.operator import get_without_operator
from tests.e2e.test_control_join import APP_PORT, Control, join_args, wait_ready

MESH3 = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: {port}
  - name: c
    port: {port}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
  - {{name: host3, address: "{ip3}:4143", services: [c]}}
"""


def _call(outbound: str, path: str, headers: dict[str, str] | None = None) -> Any:
    with HttpConn(outbound, timeout=15) as c:
        return c.request("GET", path, {"Host": "b", "Connection": "close", **(headers or {})})


def _trace(cp: Control, *args: str) -> Any:
    return cp.cli("trace", *args)


def _json(cp: Control, *args: str) -> dict[str, Any]:
    r = _trace(cp, *args, "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_trace_follows_the_request_across_hops_and_says_where_time_went_and_who_failed(mesh: Mesh) -> None:
    cp = Control(mesh)
    ip1, ip2, ip3 = fresh_ip(), fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH3.format(port=APP_PORT, ip1=ip1, ip2=ip2, ip3=ip3), "author": "test"})
    app = mesh.start_app("http", f"{ip2}:{APP_PORT}", "b")
    docs = {h: cp.add_host(h, s) for h, s in (("host1", "a"), ("host2", "b"), ("host3", "c"))}
    procs = {h: mesh.spawn(f"proxy {h}", [*join_args(cp, d, mesh.root / h), *(["--workers", "2"] if h == "host1"
                                                                               else [])]) for h, d in docs.items()}
    for h, ip in (("host1", ip1), ("host2", ip2), ("host3", ip3)):
        wait_ready(procs[h], f"{ip}:4191")
    out = f"{ip1}:4140"
    deadline = time.monotonic() + 20
    while _call(out, "/warm").status != 200:  # until host2 reports its instance of b healthy
        assert time.monotonic() < deadline, "b never became reachable"
        time.sleep(0.2)

    # A slow app: the time is the app's, on host2, and only the two hosts on the path were asked.
    slow = _call(out, "/orders?delay_ms=300")
    assert slow.status == 200
    rid = slow.header("x-request-id")
    doc = _json(cp, rid)
    assert doc["hosts_asked"] == ["host1", "host2"] and doc["problems"] == []
    hops = doc["timeline"]["hops"]
    assert [(h["host"], h["side"]) for h in hops] == [("host1", "outbound"), ("host2", "inbound")]
    assert hops[0]["next_host"] == "host2" and hops[0]["path"] == "/orders?delay_ms=300"
    assert all(h["request_id"] == rid and h["status"] == 200 for h in hops)
    assert hops[0]["trace_id"] == hops[1]["trace_id"] != ""
    assert hops[1]["upstream_head_ms"] >= 300 and hops[0]["total_ms"] >= hops[1]["total_ms"]
    slowest = doc["timeline"]["slowest"]
    assert slowest["what"] == "app b on host2" and slowest["ms"] >= 300 and slowest["share"] > 0.5
    assert doc["timeline"]["error"] is None

    table = _trace(cp, rid)
    assert table.returncode == 0, table.stderr
    text = table.stdout
    assert f"request {rid}" in text and "host1 outbound" in text and "host2 inbound" in text
    assert "app b" in text and "where the time went: app b on host2" in text and "asked host1, host2" in text

    # The app fails the request: its own 500, made behind host2's inbound proxy.
    failed = _call(out, "/status/500")
    assert failed.status == 500
    doc = _json(cp, failed.header("x-request-id"))
    assert doc["timeline"]["error"]["hop"] == "app b on host2", doc["timeline"]
    assert "error made by app b on host2" in _trace(cp, failed.header("x-request-id")).stdout

    # Bounded: a path is kept to 256 bytes. The ring keeps the last 2,048 requests that went well and, apart,
    # the last 1,024 failures: after 2,100 more good requests host2 no longer has the slow request, but still
    # has the failed one.
    long = _call(out, "/" + "x" * 4000)
    assert long.status == 200
    assert {len(h["path"]) for h in _json(cp, long.header("x-request-id"))["timeline"]["hops"]} == {256}
    # A fast request that went well is pushed out of the short ring of recent ones by the requests after it;
    # the slow one and the failed one, in rings of their own, outlive them.
    with HttpConn(out, timeout=15) as c:
        for i in range(2100):  # more than a quiet process keeps (ring.RECENT)
            assert c.request("GET", f"/fill/{i}", {"Host": "b"}).status == 200
    evicted = _trace(cp, long.header("x-request-id"), "-o", "json")  # host1's worker may have let it go as well
    assert evicted.returncode == 4 and "no record of" in evicted.stderr or ("host2", "inbound") not in [
        (h["host"], h["side"]) for h in json.loads(evicted.stdout)["timeline"]["hops"]], evicted
    for kept in (rid, failed.header("x-request-id")):
        assert ("host2", "inbound") in [(h["host"], h["side"]) for h in _json(cp, kept)["timeline"]["hops"]]

    # An id the caller's app set itself names no host: the operator says where the trace starts.
    own = _call(out, "/own", {"x-request-id": "checkout-7f3a"})
    assert own.status == 200
    r = _trace(cp, "checkout-7f3a")
    assert r.returncode == 4 and "--host" in r.stderr, (r.returncode, r.stderr)
    doc = _json(cp, "checkout-7f3a", "--host", "host1")
    assert [h["host"] for h in doc["timeline"]["hops"]] == ["host1", "host2"]

    # The app is gone: host2's inbound proxy made the error, and says so.
    app.proc.stop()
    gone = _call(out, "/after")
    assert gone.status == 502
    doc = _json(cp, gone.header("x-request-id"))
    err = doc["timeline"]["error"]
    assert err["hop"] == "host2/inbound" and err["reason"] == "connect_refused", doc["timeline"]
    text = _trace(cp, gone.header("x-request-id")).stdout
    assert "error made by host2/inbound: connect_refused" in text

    # Nothing known of an id: a clear no, not an empty timeline.
    r = _trace(cp, rid[:8] + "0" * 16)
    assert r.returncode == 4 and "no record of" in r.stderr, r.stderr

    # The caller's proxy is gone: nothing can be had, and the operator is told why.
    procs["host1"].stop()
    r = _trace(cp, gone.header("x-request-id"))
    assert r.returncode == 5 and "cannot ask host1" in r.stderr, (r.returncode, r.stderr)

    # Only operators may read traces: no credential (401), and a host's own identity (403) are refused.
    status, body = get_without_operator(cp.api_url, f"/v1/trace/{rid}")
    assert status == 401 and "operator credential" in body["error"], body
    ident = mesh.root / "host1" / "identity"
    status, body = get_without_operator(cp.api_url, f"/v1/trace/{rid}", (ident / "host.pem", ident / "host.key"))
    assert status == 403 and "not an operator credential" in body["error"], body


RETRY_MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: {port}
    balance: round_robin
    routes:
      - name: all
        retry: {{attempts: 2, on_status: [503]}}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
  - {{name: host3, address: "{ip3}:4143", services: [b]}}
"""


def test_a_retried_request_is_followed_to_every_host_it_tried(mesh: Mesh) -> None:
    """b on host2 answers 503, b on host3 answers: a request tried on both shows both, and is no error."""
    cp = Control(mesh)
    ip1, ip2, ip3 = fresh_ip(), fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": RETRY_MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2, ip3=ip3), "author": "test"})
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2", extra=["--fail-status", "503"])
    mesh.start_app("http", f"{ip3}:{APP_PORT}", "b3")
    docs = {h: cp.add_host(h, s) for h, s in (("host1", "a"), ("host2", "b"), ("host3", "b"))}
    for (h, d), ip in zip(docs.items(), (ip1, ip2, ip3), strict=True):
        wait_ready(mesh.spawn(f"proxy {h}", join_args(cp, d, mesh.root / h)), f"{ip}:4191")
    deadline = time.monotonic() + 20
    while (r := _call(f"{ip1}:4140", "/retried")).header("glassmesh-attempts") != "2":
        assert time.monotonic() < deadline, "no request was tried on both hosts"
        time.sleep(0.1)
    assert r.status == 200
    doc = _json(cp, r.header("x-request-id"))
    assert doc["hosts_asked"] == ["host1", "host3", "host2"], doc["hosts_asked"]
    hops = doc["timeline"]["hops"]
    assert hops[0]["attempts"] == 2 and hops[0]["next_host"] == "host3" and hops[0]["tried_hosts"] == ["host2"]
    assert {(h["host"], h["status"]) for h in hops[1:]} == {("host2", 503), ("host3", 200)}
    assert doc["timeline"]["error"] is None and doc["timeline"]["retried"] == ["host2/inbound: 503"]
    text = _trace(cp, r.header("x-request-id")).stdout
    assert "(2 tries)" in text and "a try failed and was made again: host2/inbound: 503" in text
