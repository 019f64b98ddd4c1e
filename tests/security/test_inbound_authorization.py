"""Who may call a service is decided at its own host's inbound proxy, whatever the caller's proxy allowed.

A caller holds a valid certificate of the mesh for a service that may not call `b` (its `calls:` says
so), connects straight to b's host's inbound port, and asks: 403 `forbidden` from that hop, counted,
and nothing reaches b's app. And the tcp ALPN, which carries raw bytes, is refused for an HTTP service,
so that no caller can send b's app a head the HTTP rules never saw (a forged glassmesh-source).
"""

from __future__ import annotations

import socket
import ssl
import struct
import time

from tests.e2e.harness import (
    App,
    HttpConn,
    Mesh,
    client_context,
    get,
    mesh_error,
    metric,
    parse_metrics,
    split,
)
from tests.e2e.test_control_watch import APP_PORT, CHost, Control, wait_for

MESH = """\
services:
  - {{name: a, calls: [b]}}
  - {{name: x, calls: [c]}}
  - {{name: b, port: {port}}}
  - {{name: c, port: {port2}}}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a, x]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
"""


def _setup(mesh: Mesh) -> tuple[Control, CHost, CHost, App]:
    cp = Control(mesh)
    h1, h2 = CHost(mesh, "host1", ["a", "x"]), CHost(mesh, "host2", ["b"])
    b = mesh.start_app("http", f"{h2.ip}:{APP_PORT}", "b2")
    cp.start()
    cp.apply(MESH.format(port=APP_PORT, port2=APP_PORT + 1, ip1=h1.ip, ip2=h2.ip))
    h2.start(cp.url)
    h1.start(cp.url)
    h2.wait_ready()
    h1.wait_ready()
    wait_for(lambda: get(h1.outbound, "/x", headers={"Host": "b"}, timeout=2).status == 200, 15, "a reaches b")
    return cp, h1, h2, b


def test_a_caller_its_config_does_not_allow_gets_403_from_the_inbound(mesh: Mesh) -> None:
    cp, h1, h2, b = _setup(mesh)
    before = b.stats()["paths"]
    cert, key = mesh.cert_for("x")  # a valid mesh identity; x's own proxy would refuse (call_not_allowed)
    raw = socket.create_connection(split(h2.inbound), timeout=5)
    with client_context(mesh.ca_pem, cert, key).wrap_socket(raw, server_hostname="b") as s:
        r = HttpConn(sock=s).request("GET", "/as-x", {"Host": "b"})
    assert r.status == 403, r
    assert mesh_error(r) == ("forbidden", "host2/inbound"), r
    assert b"'x' may not call 'b'" in r.body, r.body
    time.sleep(0.3)
    assert b.stats()["paths"] == before, "a request of a caller not allowed reached the app"
    m = parse_metrics(get(h2.admin, "/metrics").body.decode())
    assert metric(m, "glassmesh_mesh_errors_total", side="inbound", reason="forbidden") >= 1
    # The allowed caller, through its own proxy, still gets through.
    assert get(h1.outbound, "/as-a", headers={"Host": "b"}).status == 200
    # And x through its own proxy is told why (its outbound holds it back first).
    r = get(f"{h1.ip}:4141", "/as-x", headers={"Host": "b"})
    assert r.status == 403 and mesh_error(r)[0] == "call_not_allowed", r


def test_the_tcp_alpn_is_refused_for_an_http_service(mesh: Mesh) -> None:
    """The attack of the review: framed raw HTTP with a forged glassmesh-source, as an allowed caller."""
    cp, h1, h2, b = _setup(mesh)
    before = b.stats()["paths"]
    cert, key = mesh.cert_for("a")
    forged = (b"GET /forged HTTP/1.1\r\nHost: b\r\nglassmesh-source: spiffe://glassmesh.local/service/admin\r\n"
              b"Connection: close\r\n\r\n")
    raw = socket.create_connection(split(h2.inbound), timeout=5)
    ctx = client_context(mesh.ca_pem, cert, key, alpn=("glassmesh-tcp/1",))
    got = b""
    with ctx.wrap_socket(raw, server_hostname="b") as s:
        assert s.selected_alpn_protocol() == "glassmesh-tcp/1"
        try:
            s.sendall(struct.pack("!I", len(forged)) + forged)
            while chunk := s.recv(65536):
                got += chunk
        except (ssl.SSLError, OSError):
            pass
    assert b"HTTP/1.1 200" not in got, got[:300]
    time.sleep(0.3)
    assert b.stats()["paths"] == before, "raw bytes reached the HTTP app"
    m = parse_metrics(get(h2.admin, "/metrics").body.decode())
    assert metric(m, "glassmesh_mesh_errors_total", side="inbound", reason="not_a_tcp_service") >= 1
