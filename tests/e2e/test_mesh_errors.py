"""Responses the mesh makes itself say which hop made them and why, with a JSON body a person can read."""

from __future__ import annotations

from tests.e2e.harness import HttpConn, Mesh, Response, dead_address, mesh_error, metric


def assert_mesh_error(r: Response, status: int, reason: str, hop: str, service: str | None = None) -> None:
    assert r.status == status, r
    assert mesh_error(r) == (reason, hop), r
    body = r.json()
    assert body["error"] == reason
    assert body["status"] == status
    assert body["hop"]["host"] == hop.split("/")[0] and body["hop"]["side"] == hop.split("/")[1]
    assert isinstance(body.get("message"), str) and body["message"], f"no message in {body}"
    assert body.get("request_id"), f"request_id should name the request, got {body.get('request_id')!r} in {body}"
    if service is not None:
        assert body.get("service") == service, f"service should be {service!r} in {body}"
    assert (r.header("content-type") or "").startswith("application/json"), r


def setup(mesh: Mesh) -> tuple:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    b = h2.http_app("b")
    return h1, h2, b


def test_unknown_service_then_connection_still_usable(mesh: Mesh) -> None:
    h1, _, b = setup(mesh)
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        r = c.request("GET", "http://nosuch/x", {"Host": "nosuch"})
        assert_mesh_error(r, 404, "unknown_service", "host1/outbound", "nosuch")
        r = c.request("GET", "/y", {"Host": "nosuch"})
        assert_mesh_error(r, 404, "unknown_service", "host1/outbound", "nosuch")
        r = c.request("GET", "http://b/ok", {"Host": "b"})
        assert r.status == 200, "a mesh error keeps the client connection usable"
    m = h1.metrics()
    assert metric(m, "glassmesh_mesh_errors_total", side="outbound", reason="unknown_service") >= 2


def test_no_endpoints(mesh: Mesh) -> None:
    h1, _, _ = setup(mesh)
    h1.set_service("empty", [])
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        r = c.request("GET", "http://empty/", {"Host": "empty"})
    assert_mesh_error(r, 503, "no_endpoints", "host1/outbound", "empty")


def test_connect_refused_at_outbound(mesh: Mesh) -> None:
    h1, _, _ = setup(mesh)
    h1.set_service("gone", [(dead_address(), "host9")])
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        r = c.request("GET", "http://gone/", {"Host": "gone"})
        assert_mesh_error(r, 502, "connect_refused", "host1/outbound", "gone")
        assert c.request("GET", "http://b/", {"Host": "b"}).status == 200


def test_tls_failure_at_outbound(mesh: Mesh) -> None:
    """The endpoint is not a glassmesh inbound (a plain TCP echo): the mTLS handshake fails."""
    h1, _, _ = setup(mesh)
    h3 = mesh.add_host("host3")
    echo = h3.tcp_app("not-a-proxy")
    h1.set_service("weird", [(echo.addr, "host3")])
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        r = c.request("GET", "http://weird/", {"Host": "weird"})
    assert_mesh_error(r, 502, "tls_failure", "host1/outbound", "weird")


def test_app_down_behind_inbound(mesh: Mesh) -> None:
    h1, h2, _ = setup(mesh)
    # Service "down" has one instance on host2, where nothing listens.
    h2.add_instance("down", f"{h2.ip}:{h2.app_port()}")
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        r = c.request("GET", "http://down/", {"Host": "down"})
        assert_mesh_error(r, 502, "connect_refused", "host2/inbound", "down")
        assert c.request("GET", "http://b/", {"Host": "b"}).status == 200
    m = h2.metrics()
    assert metric(m, "glassmesh_mesh_errors_total", side="inbound", reason="connect_refused") >= 1
