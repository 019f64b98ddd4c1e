"""--otlp-endpoint: each proxy makes its own span per hop and sends it to a real OTLP/HTTP receiver.

A caller with a tracer sends `traceparent` (and `tracestate`); A's outbound
proxy makes a client span under the caller's span, B's inbound proxy a server
span under A's, and app B receives a traceparent naming B's span, so the app's
own spans hang under the mesh's. The collector being down costs requests
nothing: spans are dropped and counted.
"""

from __future__ import annotations

import json
import time

from tests.e2e.harness import HttpConn, Mesh, app_headers, eventually, fresh_ip, metric
from tests.e2e.otlp_receiver import Receiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # SpanKind


def _two_hosts(mesh: Mesh, otlp: str, delay_ms: int = 0) -> tuple[str, str]:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b", delay_ms=delay_ms)
    h1.proxy_args = h2.proxy_args = ["--otlp-endpoint", otlp]
    mesh.start()
    return h1.outbound("a"), h2.name


def test_spans_of_both_hops_reach_the_collector_as_parent_and_child(mesh: Mesh) -> None:
    rx = Receiver(fresh_ip())
    try:
        outbound, _ = _two_hosts(mesh, rx.url, delay_ms=50)
        with HttpConn(outbound) as c:
            r = c.request("GET", "http://b/orders?id=7", {
                "Host": "b", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "vendor=abc"})
            assert r.status == 200
            fresh = c.request("GET", "http://b/fresh", {"Host": "b"})  # no tracer at the caller: the mesh starts one
            assert fresh.status == 200
        rid = r.header("x-request-id")
        seen = json.loads(r.body)
        app_tp = app_headers(seen, "traceparent")[0]
        assert app_headers(seen, "tracestate") == ["vendor=abc"]

        def four_spans() -> None:
            assert len(rx.received()) == 4, rx.received()

        eventually(four_spans, timeout=10)
        spans = [s for s in rx.received() if s["trace_id"] == CALLER_TRACE]
        out = next(s for s in spans if s["attributes"]["glassmesh.side"] == "outbound")
        inb = next(s for s in spans if s["attributes"]["glassmesh.side"] == "inbound")
        # Parent and child across the two proxies, under the caller's span; the app sees the inbound's span.
        assert out["parent_span_id"] == CALLER_SPAN and out["kind"] == CLIENT
        assert inb["parent_span_id"] == out["span_id"] and inb["kind"] == SERVER
        assert len({CALLER_SPAN, out["span_id"], inb["span_id"]}) == 3
        assert app_tp == f"00-{CALLER_TRACE}-{inb['span_id']}-01"
        assert out["trace_state"] == inb["trace_state"] == "vendor=abc"
        for s, host in ((out, "host1"), (inb, "host2")):
            a = s["attributes"]
            assert (a["http.request.method"], a["url.path"], a["http.response.status_code"]) == ("GET", "/orders?id=7",
                                                                                                  200)
            assert (a["glassmesh.source"], a["glassmesh.destination"], a["glassmesh.host"]) == ("a", "b", host)
            assert a["glassmesh.request_id"] == rid and s["status_code"] == 0
            assert s["resource"]["service.name"] == "glassmesh-proxy" and s["resource"]["host.name"] == host
        # The outbound span holds the inbound's (a 50 ms app), and both end after they start.
        assert out["start"] <= inb["start"] and inb["end"] <= out["end"] + 5_000_000
        assert inb["end"] - inb["start"] >= 50_000_000
        assert rx.content_types == {"application/x-protobuf"}
        # A request the caller did not trace: the outbound span is the root, the inbound's its child.
        root = [s for s in rx.received() if s["trace_id"] != CALLER_TRACE]
        r_out = next(s for s in root if s["kind"] == CLIENT)
        r_in = next(s for s in root if s["kind"] == SERVER)
        assert r_out["parent_span_id"] == "" and r_in["parent_span_id"] == r_out["span_id"]
    finally:
        rx.close()


def test_a_collector_that_is_down_costs_requests_nothing(mesh: Mesh) -> None:
    down = f"http://{fresh_ip()}:4318"  # nothing listens there
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    h1.proxy_args = ["--otlp-endpoint", down]
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        t = time.monotonic()
        for i in range(50):
            assert c.request("GET", f"http://b/{i}", {"Host": "b"}).status == 200
        assert time.monotonic() - t < 10  # no request waited for the collector (its connect is refused)
        # Not sampled by the caller's tracer: no span is made for it.
        assert c.request("GET", "http://b/x", {"Host": "b", "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"}
                         ).status == 200

    def dropped() -> None:
        samples = h1.metrics()
        assert metric(samples, "glassmesh_spans_dropped_total", reason="collector") == 50
        assert metric(samples, "glassmesh_spans_exported_total") == 0

    eventually(dropped, timeout=10)
    assert "did not take" in h1.proxy.log_text()  # type: ignore[union-attr]


def test_a_bad_otlp_endpoint_is_refused_at_start() -> None:
    import subprocess

    from tests.e2e.harness import PROXY_CMD

    r = subprocess.run([*PROXY_CMD, "--config", "/nonexistent.json", "--otlp-endpoint", "ftp://collector:4318"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--otlp-endpoint must be an http:// or https:// URL" in r.stderr, r.stderr
