"""HTTP/1.1 done properly through two proxies: keep-alive, pooling, bodies, HEAD/204/304, 1.0, 100-continue, Upgrade."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from tests.e2e.apps import pattern_sha256
from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn, eventually, metric


def test_keepalive_and_pooled_mtls_connections(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        for i in range(200):
            r = c.request("GET", f"http://b/seq/{i}", {"Host": "b"})
            assert r.status == 200, f"request {i}: {r!r}"
    for i in range(20):
        with HttpConn(ab.outbound) as c:
            assert c.request("GET", f"http://b/newconn/{i}", {"Host": "b"}).status == 200
    link = {"source": "a", "destination": "b"}

    def check() -> None:
        out, inb = ab.h1.metrics(), ab.h2.metrics()
        assert metric(out, "glassmesh_requests_total", side="outbound", status_class="2xx", **link) >= 220
        hs_out = metric(out, "glassmesh_tls_handshakes_total", side="outbound", **link)
        hs_in = metric(inb, "glassmesh_tls_handshakes_total", side="inbound", **link)
        assert 1 <= hs_out <= 10, f"outbound made {hs_out} mTLS handshakes for 220 requests"
        assert 1 <= hs_in <= 10, f"inbound accepted {hs_in} mTLS handshakes for 220 requests"

    eventually(check)
    # Keep-alive on the last leg too: the app saw few connections (one of them is the harness's probe).
    assert ab.b.stats()["connections"] <= 11, ab.b.stats()["connections"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_request_bodies(ab: AB, framing: str) -> None:
    with HttpConn(ab.outbound) as c:
        for size in (0, 1, 70_000, 3_000_001):
            body = os.urandom(size)
            if framing == "chunked":
                c.send(b"POST http://b/upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n")
                for i in range(0, size, 100_000):
                    part = body[i : i + 100_000]
                    c.send(b"%x\r\n" % len(part) + part + b"\r\n")
                c.send(b"0\r\n\r\n")
                r = c.read_final()
            else:
                r = c.request("POST", "http://b/upload", {"Host": "b"}, body)
            assert r.status == 200, r
            info = r.json()
            assert (info["body_length"], info["body_sha256"]) == (size, hashlib.sha256(body).hexdigest())


@pytest.mark.parametrize("chunked", [False, True])
def test_response_bodies(ab: AB, chunked: bool) -> None:
    with HttpConn(ab.outbound) as c:
        for size in (0, 1, 70_000, 5_000_003):
            r = c.request("GET", f"http://b/download?bytes={size}&chunked={int(chunked)}", {"Host": "b"})
            assert r.status == 200
            assert (r.body_len, r.body_sha256) == (size, pattern_sha256(size))


def test_head_204_304_have_no_body_and_keep_the_connection(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r = c.request("HEAD", "http://b/download?bytes=5000", {"Host": "b"})
        assert (r.status, r.body) == (200, b"")
        assert r.header("content-length") == "5000", "HEAD keeps the GET's content-length"
        r = c.request("HEAD", "http://b/echo", {"Host": "b"})
        assert (r.status, r.body) == (200, b"")
        r = c.request("GET", "http://b/status/204", {"Host": "b"})
        assert (r.status, r.body) == (204, b"")
        assert r.header("content-length") in (None, "0") and r.header("transfer-encoding") is None
        r = c.request("GET", "http://b/status/304", {"Host": "b", "If-None-Match": '"v1"'})
        assert (r.status, r.body, r.header("etag")) == (304, b"", '"v1"')
        assert r.header("transfer-encoding") is None
        r = c.request("GET", "http://b/after", {"Host": "b"})
        assert r.status == 200 and r.json()["path"] == "/after", "the connection is still in sync"
    assert ab.b.stats()["paths"][-1] == "/after"


def test_http10_client(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/download?bytes=100000&chunked=1", {}, version="HTTP/1.0")
        assert r.status == 200, r
        assert r.header("transfer-encoding") is None, "an HTTP/1.0 client cannot read chunked"
        assert (r.body_len, r.body_sha256) == (100_000, pattern_sha256(100_000))
        assert c.closed_by_peer(), "an HTTP/1.0 connection without keep-alive is closed after the response"
    with HttpConn(ab.outbound) as c:
        r = c.request("POST", "/upload", {"Host": "b"}, b"x" * 1000, version="HTTP/1.0")
        assert r.status == 200 and r.json()["body_length"] == 1000
        assert r.header("transfer-encoding") is None


@pytest.mark.parametrize("header", ["Connection", "Proxy-Connection"])
def test_http10_keep_alive_client(ab: AB, header: str) -> None:
    """HTTP/1.0 asking for keep-alive (curl in proxy mode says Proxy-Connection) is still answered as 1.0."""
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/download?bytes=1000", {header: "keep-alive"}, version="HTTP/1.0")
        assert r.status == 200 and r.body_len == 1000, r
        assert r.header("transfer-encoding") is None
        assert (r.header("connection") or "").lower() == "keep-alive", "a 1.0 client is told the connection stays"
        r = c.request("GET", "http://b/download?bytes=5000&chunked=1", {header: "keep-alive"}, version="HTTP/1.0")
        assert r.status == 200 and (r.body_len, r.body_sha256) == (5000, pattern_sha256(5000)), r
        assert r.header("transfer-encoding") is None, "an HTTP/1.0 client cannot read chunked, even kept alive"
        assert c.closed_by_peer(), "a body of unknown length ends with the connection"


def test_expect_100_continue(ab: AB) -> None:
    body = os.urandom(200_000)
    with HttpConn(ab.outbound, timeout=5) as c:
        c.send_request("POST", "http://b/upload", {"Host": "b", "Expect": "100-continue",
                                                     "Content-Length": str(len(body))})
        interim = c.read_response()  # must come before we send the body; times out otherwise
        assert interim.status == 100, interim
        c.send(body)
        r = c.read_final()
        assert r.status == 200, r
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
        # A client that does not wait for the 100 works too.
        c.send_request("POST", "http://b/upload2", {"Host": "b", "Expect": "100-continue"}, body)
        r = c.read_final()
        assert r.status == 200 and r.json()["body_length"] == len(body)
        assert c.request("GET", "http://b/after", {"Host": "b"}).json()["path"] == "/after"


def test_upgrade_is_relayed_both_ways(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/ws", {
            "Host": "b", "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
        assert r.status == 101, r
        assert (r.header("upgrade") or "").lower() == "websocket"
        for i in range(20):  # ping-pong, each message must come back before the next is sent
            msg = bytes([0x82, 8]) + os.urandom(8) + b"\r\n\r\nHTTP/1.1 200 OK\r\n%d" % i
            c.send(msg)
            assert c.recv_exact(len(msg)) == msg
        big = os.urandom(3_000_000)
        got = bytearray()

        def reader() -> None:
            got.extend(c.recv_exact(len(big)))

        t = threading.Thread(target=reader)
        t.start()
        c.send(big)
        t.join(30)
        assert bytes(got) == big
        c.shutdown_write()
        assert c.recv_until_eof() == b"<ws-closed>", "half-close crosses the upgraded connection"
    assert ab.b.stats()["paths"] == ["/ws"]
