"""The test apps and harness tools, checked directly (no proxy), so that a red proxy test is the proxy's fault."""

from __future__ import annotations

import hashlib
import os
import socket

from tests.e2e.apps import pattern_chunks, pattern_sha256
from tests.e2e.harness import HttpConn, Mesh, split


def test_pattern_is_deterministic_and_unaligned() -> None:
    data = b"".join(bytes(c) for c in pattern_chunks(3 << 20, 65536))
    assert len(data) == 3 << 20
    assert hashlib.sha256(data).hexdigest() == pattern_sha256(3 << 20)
    assert data[:4096] != data[1 << 20 : (1 << 20) + 4096]


def test_http_app_echo_bodies_and_special_statuses(mesh: Mesh) -> None:
    h = mesh.add_host("h")
    app = h.http_app("b")
    with HttpConn(app.addr) as c:
        r = c.request("GET", "/x?y=1", {"Host": "b", "X-Thing": "1"})
        info = r.json()
        assert (r.status, info["method"], info["target"], info["body_length"]) == (200, "GET", "/x?y=1", 0)
        assert ["X-Thing", "1"] in info["headers"]

        body = os.urandom(100_000)
        r = c.request("POST", "/upload", {"Host": "b"}, body)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

        c.send(b"POST /upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
        assert c.read_final().json()["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()

        for chunked in ("0", "1"):
            r = c.request("GET", f"/download?bytes=300000&chunked={chunked}", {"Host": "b"})
            assert r.body_sha256 == pattern_sha256(300_000)
            assert (r.header("transfer-encoding") == "chunked") == (chunked == "1")

        r = c.request("HEAD", "/download?bytes=1000", {"Host": "b"})
        assert (r.status, r.header("content-length"), r.body) == (200, "1000", b"")
        for code in (204, 304):
            r = c.request("GET", f"/status/{code}", {"Host": "b"})
            assert (r.status, r.body) == (code, b"")
        r = c.request("GET", "/after", {"Host": "b"})
        assert r.json()["conn_requests"] == 9

        c.send_request("POST", "/e", {"Host": "b", "Expect": "100-continue", "Content-Length": "3"})
        assert c.read_response().status == 100
        c.send(b"abc")
        r = c.read_final()
        assert r.json()["sent_100"] is True and r.json()["body_length"] == 3
    assert app.requests() == 10


def test_http_app_http10_and_upgrade(mesh: Mesh) -> None:
    h = mesh.add_host("h")
    app = h.http_app("b")
    with HttpConn(app.addr) as c:
        r = c.request("GET", "/", {"Host": "b"}, version="HTTP/1.0")
        assert r.status == 200 and r.json()["version"] == "HTTP/1.0"
        assert c.closed_by_peer()
    with HttpConn(app.addr) as c:
        r = c.request("GET", "/ws", {"Host": "b", "Connection": "Upgrade", "Upgrade": "websocket"})
        assert r.status == 101
        c.send(b"\x81\x05hello")
        assert c.recv_exact(7) == b"\x81\x05hello"
        c.shutdown_write()
        assert c.recv_until_eof() == b"<ws-closed>"


def test_tcp_app_echo_and_half_close(mesh: Mesh) -> None:
    h = mesh.add_host("h")
    echo = h.tcp_app("db", mode="echo", banner="HELLO\n")
    sink = h.tcp_app("sink", mode="sink")
    s = socket.create_connection(split(echo.addr), timeout=5)
    assert s.recv(6) == b"HELLO\n"
    s.sendall(b"\x00\x01\xff" * 1000)
    got = b""
    while len(got) < 3000:
        got += s.recv(65536)
    assert got == b"\x00\x01\xff" * 1000
    s.shutdown(socket.SHUT_WR)
    tail = b"".join(iter(lambda: s.recv(65536), b""))
    assert tail.startswith(b"EOF ") and b'"bytes": 3000' in tail
    s = socket.create_connection(split(sink.addr), timeout=5)
    s.sendall(b"x" * 10)
    s.shutdown(socket.SHUT_WR)
    assert b"".join(iter(lambda: s.recv(65536), b"")).startswith(b'EOF {"bytes": 10')


def test_relay_records_bytes(mesh: Mesh) -> None:
    h = mesh.add_host("h")
    app = h.http_app("b")
    relay = mesh.relay(app.addr)
    with HttpConn(relay.listen) as c:
        assert c.request("POST", "/", {"Host": "b"}, b"MARKER").status == 200
    assert b"MARKER" in relay.recorded() and relay.connections == 1
