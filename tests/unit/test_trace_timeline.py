"""Where `glassmesh trace` starts (the host an id names) and how it lays a request's records out."""

from __future__ import annotations

import re

from glassmesh.api import trace
from glassmesh.protocols import http1


def test_ids_minted_by_a_proxy_name_its_host_among_200():
    hosts = [f"host-{i}" for i in range(200)]
    http1.set_origin(trace.host_tag("host-137").encode())
    try:
        rid = http1.new_request_id().decode()
        tp = http1.new_traceparent().decode()
        assert re.fullmatch(r"[0-9a-f]{24}", rid) and http1.valid_traceparent(tp.encode())
        assert trace.origin_hosts(rid, hosts) == ["host-137"]
        assert trace.origin_hosts(tp[3:35], hosts) == ["host-137"]  # a trace id too
        http1.reseed()  # a forked worker: other random parts, the same host
        assert trace.origin_hosts(http1.new_request_id().decode(), hosts) == ["host-137"]
    finally:
        http1.set_origin(b"")
    # An id an app made itself names no host: the operator gives --host.
    assert trace.origin_hosts("my-own-request-id-42", hosts) == []
    assert len({trace.host_tag(h) for h in hosts}) == 200


def _hop(host, side, start, total, before, head, **kw):
    return {"host": host, "side": side, "start": start, "total_ms": total, "before_send_ms": before,
            "upstream_head_ms": head, "source": "web", "destination": "api", "status": 200, **kw}


def test_a_slow_app_is_where_the_time_went():
    recs = [
        _hop("b", "inbound", 100.0012, 300.0, 0.2, 299.5),
        _hop("a", "outbound", 100.0, 302.0, 0.4, 301.4, next_host="b", endpoint="127.0.0.2:4143"),
    ]
    t = trace.timeline(recs)
    assert [(h["host"], h["side"]) for h in t["hops"]] == [("a", "outbound"), ("b", "inbound")]
    assert t["hops"][1]["offset_ms"] == 1.2
    assert t["slowest"]["what"] == "app api on b" and t["slowest"]["ms"] == 299.5
    assert t["error"] is None
    assert t["hops"][0]["phases"][1] == ["waiting on next hop (b)", 301.4]


def test_the_hop_that_made_the_error_is_named():
    recs = [
        _hop("a", "outbound", 1.0, 5.0, 0.1, 4.8, status=502, next_host="b", peer_error="connect_refused; hop=b/inbound"),
        _hop("b", "inbound", 1.001, 4.0, 3.9, None, status=502, mesh_error="connect_refused",
             error_message="127.0.0.9:18080 refused the connection"),
    ]
    err = trace.timeline(recs)["error"]
    assert err["hop"] == "b/inbound" and err["reason"] == "connect_refused"
    # Without b's records, a's own record still says who made it (the next hop's glassmesh-error).
    assert trace.timeline(recs[:1])["error"]["hop"] == "b/inbound"
    # An app's own 5xx: the app behind the last inbound hop.
    app500 = [_hop("a", "outbound", 1.0, 5.0, 0.1, 4.8, status=500, next_host="b"),
              _hop("b", "inbound", 1.001, 4.0, 0.1, 3.8, status=500)]
    assert trace.timeline(app500)["error"]["hop"] == "app api on b"


def test_a_try_that_failed_and_was_made_again_is_no_error_but_is_shown():
    recs = [
        _hop("a", "outbound", 1.0, 9.0, 0.1, 8.8, attempts=2, next_host="c", tried_hosts=["b"]),
        _hop("b", "inbound", 1.001, 0.5, 0.5, None, status=502, mesh_error="connect_refused"),
        _hop("c", "inbound", 1.003, 8.0, 0.1, 7.8),
    ]
    t = trace.timeline(recs)
    assert t["error"] is None and t["retried"] == ["b/inbound: connect_refused"]
    assert t["slowest"]["what"] == "app api on c"
