"""What one peer (a service identity) may hold at an inbound port: its own budget of streams and of
multiplexed connections, apart from the local apps' and from other peers'; idle peer connections end.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from tests.e2e.harness import HttpConn, Mesh, client_context, get, mesh_error, split


def _mesh(mesh: Mesh, limits: dict[str, int] | None = None, timeouts: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    h2.client("c")  # a local app of host2 that calls b through host2's own proxy
    h2.limits = limits or {}
    h2.timeouts = timeouts or {}
    mesh.start()
    return h1, h2


def _tls(mesh: Mesh, h2, service: str, alpn: str) -> ssl.SSLSocket:  # type: ignore[no-untyped-def]
    cert, key = mesh.cert_for(service)
    raw = socket.create_connection(split(h2.inbound), timeout=5)
    return client_context(mesh.ca_pem, cert, key, alpn=(alpn,)).wrap_socket(raw, server_hostname="b")


def test_one_peer_cannot_take_more_than_its_streams(mesh: Mesh) -> None:
    h1, h2 = _mesh(mesh, limits={"max_peer_streams": 8})
    held = []
    try:
        statuses = []
        for _ in range(10):  # as a, ten HTTP connections at once, each with a request in flight
            s = _tls(mesh, h2, "a", "http/1.1")
            held.append(s)
            c = HttpConn(sock=s)
            r = c.request("GET", "/held", {"Host": "b"})
            statuses.append(r.status)
            if r.status == 503:
                assert mesh_error(r) == ("overloaded", "host2/inbound"), r
        assert statuses.count(200) == 8 and statuses.count(503) == 2, statuses
        # Meanwhile the local app c (host2's own outbound, its own budget) and another identity are served.
        assert get(h2.outbound("c"), "/local", headers={"Host": "b"}).status == 200
    finally:
        for s in held:
            s.close()


def test_one_peer_cannot_open_more_than_its_mux_connections(mesh: Mesh) -> None:
    h1, h2 = _mesh(mesh, limits={"max_peer_connections": 3})
    held = []
    try:
        answers = []
        for _ in range(5):
            s = _tls(mesh, h2, "a", "glassmesh-mux/1")
            held.append(s)
            try:
                answers.append(len(s.recv(64)))  # the inbound speaks first: its SETTINGS frame
            except (OSError, ssl.SSLError):
                answers.append(0)
        assert [n > 0 for n in answers] == [True, True, True, False, False], answers
        # a's own proxy shares a's budget (the same identity): refused at once with a mesh error, not hung.
        assert get(h1.outbound("a"), "/x", headers={"Host": "b"}, timeout=10).status in (502, 503)
        assert get(h2.outbound("c"), "/local", headers={"Host": "b"}).status == 200
    finally:
        for s in held:
            s.close()


def test_an_idle_peer_connection_is_closed(mesh: Mesh) -> None:
    h1, h2 = _mesh(mesh, timeouts={"idle_ms": 1500})
    s = _tls(mesh, h2, "a", "glassmesh-mux/1")
    try:
        hdr = s.recv(10)
        assert len(hdr) == 10 and struct.unpack("!IBBI", hdr)[1] == 3  # SETTINGS
        s.recv(struct.unpack("!IBBI", hdr)[0])
        s.settimeout(10)
        t0 = time.monotonic()
        try:
            rest = s.recv(64)
        except (OSError, ssl.SSLError):
            rest = b""
        assert rest == b"" and time.monotonic() - t0 < 6, "an idle mux connection was kept open"
    finally:
        s.close()
