"""Timeouts end in a mesh error that names the hop, never in a hung client."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import HttpConn, Mesh, fresh_ip, mesh_error


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and reads, but never answers."""
    ip = fresh_ip()
    srv = socket.socket()
    srv.bind((ip, 0))
    srv.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def run() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                conns.append(c)
            except OSError:
                continue

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield f"{ip}:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    srv.close()


def test_app_that_never_answers_gets_504_from_the_inbound(mesh: Mesh, silent_server: str) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.add_instance("b", silent_server)
    h2.timeouts = {"response_ms": 500}
    mesh.start()
    with HttpConn(h1.outbound("a"), timeout=10) as c:
        t = time.monotonic()
        r = c.request("GET", "http://b/slow", {"Host": "b"})
        took = time.monotonic() - t
    assert r.status == 504 and mesh_error(r) == ("response_timeout", "host2/inbound"), r
    assert took < 3, f"the 500 ms response timeout took {took:.1f}s"
    assert r.json()["request_id"]


def test_outbound_response_timeout_names_the_outbound(mesh: Mesh, silent_server: str) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.add_instance("b", silent_server)
    h1.timeouts = {"response_ms": 500}
    mesh.start()
    with HttpConn(h1.outbound("a"), timeout=10) as c:
        r = c.request("GET", "http://b/slow", {"Host": "b"})
        assert r.status == 504 and mesh_error(r) == ("response_timeout", "host1/outbound"), r


def test_slow_request_head_gets_408_and_is_closed(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    b = h2.http_app("b")
    h1.timeouts = {"head_ms": 500}
    mesh.start()
    host, port = h1.outbound("a").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET http://b/ HTTP/1.1\r\nHost: b\r\n")  # and never the blank line
        t = time.monotonic()
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        took = time.monotonic() - t
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]
    assert b"glassmesh-error: request_timeout; hop=host1/outbound" in data
    assert took < 3
    assert b.requests() == 0


def test_idle_client_connection_is_closed(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    h1.timeouts = {"idle_ms": 500}
    mesh.start()
    host, port = h1.outbound("a").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET http://b/ HTTP/1.1\r\nHost: b\r\n\r\n")
        time.sleep(0.3)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        t = time.monotonic()
        assert s.recv(65536) == b"", "the idle connection is closed by the proxy"
        assert time.monotonic() - t < 3
