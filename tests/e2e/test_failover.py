"""When an endpoint cannot serve, a request that never reached an app goes to another one."""

from __future__ import annotations

from tests.e2e.harness import HttpConn, Mesh, app_headers, metric


def test_app_down_behind_a_live_proxy_fails_over_with_no_error(mesh: Mesh) -> None:
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    b2 = h2.http_app("b")
    b3 = h3.http_app("b")
    mesh.start()
    b3.proc.stop()  # host3's proxy is up, its app is gone: host3/inbound answers connect_refused
    with HttpConn(h1.outbound("a")) as c:
        for i in range(40):
            r = c.request("GET", f"http://b/{i}", {"Host": "b"})
            assert r.status == 200, f"request {i}: {r!r}"
            assert r.json()["app"] == "b@host2"
    m = h1.metrics()
    # Sent again, counted as retries, not as mesh errors; P2C then avoids host3 (a failure weighs 250 ms).
    assert metric(m, "glassmesh_retries_total", side="outbound", destination="b", reason="connect_refused") >= 1
    assert metric(m, "glassmesh_mesh_errors_total", side="outbound", reason="connect_refused") == 0
    assert b2.requests() >= 40


def test_a_request_with_a_body_is_not_replayed(mesh: Mesh) -> None:
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    h2.http_app("b")
    b3 = h3.http_app("b")
    mesh.start()
    b3.proc.stop()
    statuses = []
    with HttpConn(h1.outbound("a")) as c:
        for i in range(6):
            statuses.append(c.request("POST", f"http://b/{i}", {"Host": "b"}, b"payload").status)
    # What P2C sends to host3 (at least its first try: then a failure weighs 250 ms and it is avoided)
    # comes back as host3's error, not silently replayed.
    assert statuses.count(502) >= 1 and statuses.count(200) >= 2, statuses


def test_endpoint_outside_the_mesh_is_called_in_plain_http(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    ext = h2.http_app("ext")  # an app no proxy fronts for the caller: found by DNS in real life
    h1.service_overrides["dnsb"] = {"name": "dnsb", "protocol": "http",
                                    "endpoints": [{"address": ext.addr, "host": "external", "mesh": False}]}
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        r = c.request("GET", "http://dnsb/x", {"Host": "dnsb"})
    assert r.status == 200, r
    assert app_headers(r.json(), "glassmesh-source") == [], "no mesh identity is claimed outside the mesh"
    assert (r.header("glassmesh-trail") or "").startswith("host1/outbound")
