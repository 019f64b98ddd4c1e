"""--access-log: one JSON line per request, mesh-made errors included, as an operator greps them."""

from __future__ import annotations

import json

from tests.e2e.harness import HttpConn, Mesh, eventually


def test_access_log_has_a_line_per_request(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    log = mesh.root / "host1-access.log"
    h1.proxy_args = ["--access-log", str(log)]
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        ok = c.request("GET", "http://b/logged?x=1", {"Host": "b", "x-request-id": "rid-123"})
        assert ok.status == 200
        missing = c.request("GET", "http://nosuch/", {"Host": "nosuch"})
        assert missing.status == 404

    def two_lines() -> None:
        assert len(log.read_text().splitlines()) == 2, log.read_text()

    eventually(two_lines)
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first["side"] == "outbound" and first["source"] == "a" and first["destination"] == "b"
    assert (first["method"], first["path"], first["status"]) == ("GET", "/logged?x=1", 200)
    assert first["request_id"] == "rid-123" and first["host"] == "host1" and first["duration_ms"] >= 0
    assert "mesh_error" not in first
    assert second["status"] == 404 and second["mesh_error"] == "unknown_service"
    assert second["destination"] == "nosuch" and second["source"] == "a" and second["request_id"]


def test_access_log_of_a_proxy_under_the_control_plane(mesh: Mesh) -> None:
    """`--control ... --access-log FILE` writes the same lines (it once crashed on each request instead)."""
    from tests.e2e.test_control_watch import Topo

    topo = Topo(mesh)
    log = mesh.root / "host1-access.log"
    topo.up(h1_args=["--access-log", str(log)])
    with HttpConn(topo.h1.outbound) as c:
        assert c.request("GET", "http://b/controlled", {"Host": "b"}).status == 200

    def one_line() -> None:
        lines = log.read_text().splitlines() if log.exists() else []
        assert len(lines) == 1, lines

    eventually(one_line)
    rec = json.loads(log.read_text())
    assert (rec["host"], rec["side"], rec["destination"], rec["path"], rec["status"]) == (
        "host1", "outbound", "b", "/controlled", 200)
    assert "Traceback" not in topo.h1.proxy.log_text()  # type: ignore[union-attr]
