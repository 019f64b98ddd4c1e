"""A proxy under a real control plane over its life: flags at start-up, rejected snapshots, listeners.

Real processes throughout: `glassmesh control`, `glassmesh proxy --control`
(with one worker and with --workers 2), the echo apps of apps.py. What is
checked is what a user sees: access-log lines, error bodies, kept-alive
connections, ports that open and close as mesh.yaml changes, the acks in
`glassmesh status`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.harness import HttpConn, Mesh, get, mesh_error
from tests.e2e.test_control_watch import APP_PORT, CHost, Control, wait_for

MESH = """\
services:
  - name: a
  - name: b
    port: {port}
{extra}hosts:
  - {{name: host1, address: "{ip1}:4143", services: [{h1}]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
"""


class Pair:
    """host1 runs a (a caller; c too when asked), host2 runs b with its app; one control plane."""

    def __init__(self, mesh: Mesh, h1_services: list[str] | None = None) -> None:
        self.mesh = mesh
        self.cp = Control(mesh)
        self.h1 = CHost(mesh, "host1", h1_services or ["a", "c"])
        self.h2 = CHost(mesh, "host2", ["b"])
        self.b = mesh.start_app("http", f"{self.h2.ip}:{APP_PORT}", "b2")

    def yaml(self, h1: tuple[str, ...] = ("a",)) -> str:
        extra = "".join(f"  - name: {s}\n" for s in h1 if s != "a")
        return MESH.format(port=APP_PORT, ip1=self.h1.ip, ip2=self.h2.ip, h1=", ".join(h1), extra=extra)

    def up(self, h1_args: list[str], h1: tuple[str, ...] = ("a",)) -> None:
        self.cp.start()
        self.cp.apply(self.yaml(h1))
        self.h2.start(self.cp.url)
        self.h1.start(self.cp.url, h1_args)
        self.h2.wait_ready()
        self.h1.wait_ready()
        self.wait_b(self.h1.outbound)

    def wait_b(self, outbound: str, timeout: float = 10) -> None:
        """Until b@host2 is registered (its health check) and reachable through `outbound`."""
        def ok() -> bool:
            try:
                return get(outbound, "/x", headers={"Host": "b"}, timeout=2).status == 200
            except OSError:
                return False

        wait_for(ok, timeout, f"b answers through {outbound}")

    def host_status(self, name: str) -> dict[str, Any]:
        return next(h for h in self.cp.status()["hosts"] if h["name"] == name)


@pytest.fixture
def pair(mesh: Mesh) -> Pair:
    return Pair(mesh)


def workers_args(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers > 1 else []


# --------------------------------------------------------------------------- point 1: --access-log


@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_under_a_control_plane(pair: Pair, workers: int) -> None:
    """The issue: with --control and one worker, --access-log emptied every mesh error and reset connections."""
    log = pair.mesh.root / "host1-access.log"
    pair.up(["--access-log", str(log), *workers_args(workers)])
    n = 60
    with HttpConn(pair.h1.outbound) as c:  # one connection throughout: keep-alive must survive every answer
        for i in range(n):
            if i % 3 == 2:
                r = c.request("GET", "/missing", {"Host": "nosuch"})
                assert r.status == 404 and mesh_error(r) == ("unknown_service", "host1/outbound"), r
                body = json.loads(r.body)
                assert body["error"] == "unknown_service" and body["service"] == "nosuch", body
            elif i % 3 == 1:
                r = c.request("POST", f"/post/{i}", {"Host": "b"}, body=b"x" * 1000)
                assert r.status == 200 and r.json()["body_length"] == 1000, r
            else:
                r = c.request("GET", f"/get/{i}", {"Host": "b"})
                assert r.status == 200 and r.header("x-app") == "b2", r
            assert (r.header("connection") or "").lower() != "close", r
        assert not c.closed_by_peer(0.3)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    wait_for(lambda: len([x for x in lines() if x["source"] == "a"]) >= n, 5, f"{n} access-log lines")
    ours = [x for x in lines() if x["source"] == "a"]
    errors = [x for x in ours if x["destination"] == "nosuch"]
    assert len(errors) == n // 3 and all(x["status"] == 404 and x["mesh_error"] == "unknown_service"
                                         for x in errors), errors[:3]
    posts = [x for x in ours if x["method"] == "POST"]
    assert len(posts) == n // 3 and all(x["status"] == 200 and x["destination"] == "b" for x in posts)
    assert all(x["host"] == "host1" and x["side"] == "outbound" for x in ours)
    # The request path logs through the batched writer, not a plain file: nothing about that in the log.
    assert "Traceback" not in pair.h1.proxy.log_text() and "AttributeError" not in pair.h1.proxy.log_text()  # type: ignore[union-attr]
