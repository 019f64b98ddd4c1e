"""Trailers cross the mesh: a chunked body's trailer fields go from client to app and from app to client.

gRPC-Web, checksumming uploads and streaming APIs put what they only know at the end
(a status, a digest) in trailers; a mesh that drops them breaks those apps silently.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn


def _chunked_post(c: HttpConn, target: str, parts: list[bytes], trailer_lines: bytes) -> None:
    c.send(f"POST {target} HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n".encode())
    for p in parts:
        c.send(b"%x\r\n%s\r\n" % (len(p), p))
    c.send(b"0\r\n" + trailer_lines + b"\r\n")


def test_request_trailers_reach_the_app(ab: AB) -> None:
    body = [b"hello ", b"trailers"]
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    with HttpConn(ab.outbound) as c:
        _chunked_post(c, "http://b/upload", body, f"x-checksum: {digest}\r\nx-count: 2\r\n".encode())
        r = c.read_final()
        assert r.status == 200, r
        info = r.json()
        assert info["body_sha256"] == digest
        assert info["trailers"] == [["x-checksum", digest], ["x-count", "2"]]
        assert ["Trailer", "x-checksum"] in info["headers"], "the head still announces its trailer"
        assert c.request("GET", "http://b/after", {"Host": "b"}).json()["path"] == "/after", "still in sync"


def test_response_trailers_reach_the_client(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        for _ in range(3):  # kept alive: each answer's trailers end it, and the next one starts clean
            _chunked_post(c, "http://b/trailers?t=grpc-status:0&t=grpc-message:ok", [b"abc"], b"x-sent: yes\r\n")
            r = c.read_final()
            assert r.status == 200, r
            assert r.header("transfer-encoding") == "chunked"
            assert r.body == b"3 " + hashlib.sha256(b"abc").hexdigest().encode() + b"\n"
            assert r.trailers == [("x-sent", "yes"), ("x-body-sha256", hashlib.sha256(b"abc").hexdigest()),
                                  ("grpc-status", "0"), ("grpc-message", "ok")]
            assert r.header("trailer") == "x-body-sha256"


def test_mesh_and_routing_fields_in_trailers_are_dropped(ab: AB) -> None:
    """A trailer must not pass for a mesh header or reroute (RFC 9110 6.5.1): dropped, the rest crosses."""
    dropped = b"host: evil\r\nglassmesh-source: spiffe://x/evil\r\nx-request-id: forged\r\n"
    with HttpConn(ab.outbound) as c:
        _chunked_post(c, "http://b/upload", [b"x"], dropped + b"x-kept: 1\r\n")
        r = c.read_final()
        assert r.status == 200, r
        assert r.json()["trailers"] == [["x-kept", "1"]]
        _chunked_post(c, "http://b/trailers?t=glassmesh-trail:forged&t=glassmesh-error:connect_refused&t=x-ok:1",
                      [b"x"], b"")
        r = c.read_final()
        assert r.status == 200, r
        assert [k for k, _ in r.trailers] == ["x-body-sha256", "x-ok"]
        assert c.request("GET", "http://b/after", {"Host": "b"}).json()["path"] == "/after"


@pytest.mark.parametrize("field", [b"content-length: 5", b"transfer-encoding: chunked"])
def test_framing_fields_in_request_trailers_are_refused(ab: AB, field: bytes) -> None:
    """A trailer that would reframe the body is a smuggling shape (llhttp refuses it): 400, and the connection ends."""
    with HttpConn(ab.outbound) as c:
        _chunked_post(c, "http://b/upload", [b"x"], field + b"\r\n")
        r = c.read_final()
        assert r.status == 400 and r.header("glassmesh-error") == "bad_request; hop=host1/outbound", r
        assert c.closed_by_peer()


def test_http10_client_gets_the_body_without_trailers(ab: AB) -> None:
    """An HTTP/1.0 client cannot read chunked: the body arrives whole, its trailers cannot."""
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/trailers?t=grpc-status:0", {}, version="HTTP/1.0")
        assert r.status == 200 and r.header("transfer-encoding") is None, r
        assert r.body == b"0 " + hashlib.sha256(b"").hexdigest().encode() + b"\n"
        assert r.trailers == []
