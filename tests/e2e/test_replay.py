"""A request whose connection to the next hop closes before any answer is sent again when that is safe.

Safe: nothing of the answer arrived, the method is idempotent and the request has
no body. The inbound side sends it again on a fresh connection to a local instance;
the outbound side sends it to another endpoint (also when the peer's inbound could
not get an answer from its app). A POST may have been acted on: it gets its 502,
naming the hop that saw the reset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.e2e.harness import App, Host, HttpConn, Mesh, eventually, mesh_error, metric, wait_port

CLOSING_APP = Path(__file__).resolve().with_name("closing_app.py")


def closing_app(mesh: Mesh, host: Host, service: str, mode: str) -> App:
    addr = f"{host.ip}:{host.app_port()}"
    name = f"{service}@{host.name}"
    p = mesh.spawn(f"app {name}", [sys.executable, str(CLOSING_APP), "--listen", addr, "--name", name,
                                   "--mode", mode])
    wait_port(addr, p)
    host.add_instance(service, addr)
    return App(p, addr, name)


def a_calls_a_closing_b(mesh: Mesh) -> tuple[Host, Host]:
    """a on host1 calls b on host2, whose app closes each kept-alive connection at its second request."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    closing_app(mesh, h2, "b", "second")
    mesh.start()
    return h1, h2


def test_a_get_on_a_kept_alive_connection_the_app_closed_is_answered(mesh: Mesh) -> None:
    h1, h2 = a_calls_a_closing_b(mesh)
    with HttpConn(h1.outbound("a")) as c:
        for i, method in enumerate(["GET", "GET", "HEAD", "DELETE", "GET"]):
            r = c.request(method, f"/{i}", {"Host": "b"})
            assert r.status == 200, f"{method} /{i}: {r!r}"
    assert metric(h2.metrics(), "glassmesh_retries_total", side="inbound", reason="upstream_reset") >= 4


def test_a_post_the_app_may_have_seen_is_not_replayed(mesh: Mesh) -> None:
    h1, h2 = a_calls_a_closing_b(mesh)
    with HttpConn(h1.outbound("a")) as c:
        assert c.request("GET", "/warm", {"Host": "b"}).status == 200  # leaves a kept-alive connection to the app
        for body in (b"", b"order=1"):
            r = c.request("POST", "/orders", {"Host": "b"}, body)
            assert r.status == 502, r
            assert mesh_error(r) == ("upstream_reset", "host2/inbound"), r
            assert r.json()["hop"] == {"host": "host2", "side": "inbound", "proxy": "glassmesh"}
            assert c.request("GET", "/warm", {"Host": "b"}).status == 200


def test_an_app_that_never_answers_is_routed_around(mesh: Mesh) -> None:
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    closing_app(mesh, h2, "b", "never")  # accepts and closes every connection: an app on its way out
    h3.http_app("b")
    # Each endpoint in turn, none ejected: so that POSTs do reach host2 (P2C would soon avoid it).
    mesh.policies["b"] = {"balance": "round_robin", "outlier": None}
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        for i in range(10):
            r = c.request("GET", f"/{i}", {"Host": "b"})
            assert r.status == 200, f"request {i}: {r!r}"
            assert r.json()["app"] == "b@host3"
        # Round robin sends one of two POSTs to host2, whose app may have acted on it: not replayed.
        posts = [c.request("POST", "/orders", {"Host": "b"}, b"") for _ in range(2)]
        assert sorted(r.status for r in posts) == [200, 502], posts
        assert [mesh_error(r) for r in posts if r.status == 502] == [("upstream_reset", "host2/inbound")]
    assert metric(h1.metrics(), "glassmesh_retries_total", side="outbound", reason="upstream_reset") >= 1


def test_a_put_whose_body_was_not_sent_yet_is_replayed(mesh: Mesh) -> None:
    h1, h2 = a_calls_a_closing_b(mesh)

    def replays() -> float:
        return metric(h2.metrics(), "glassmesh_retries_total", side="inbound", reason="upstream_reset")

    with HttpConn(h1.outbound("a")) as c:
        assert c.request("GET", "/warm", {"Host": "b"}).status == 200
        before = replays()
        # The head goes out at once; the body waits (as a client waits after Expect: 100-continue).
        c.send_request("PUT", "/doc", {"Host": "b", "Content-Length": "5", "Expect": "100-continue"})

        def replayed() -> None:
            assert replays() > before

        eventually(replayed, timeout=10)  # the app closed at the head; host2 sent the head again
        c.send(b"hello")
        r = c.read_final("PUT")
    assert r.status == 200, r
    assert r.json()["request"] == "PUT /doc HTTP/1.1"
