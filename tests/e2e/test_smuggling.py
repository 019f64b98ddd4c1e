"""Ambiguous or malformed requests get 400 and never reach an app, and never desync a connection.

Each bad request is sent in one write together with a request the attacker
wants smuggled. The proxy must answer 400 and then not treat any of the bytes
after the bad request as a new request: it closes the connection (it cannot
know where the next request would start). Nothing reaches the app.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn, client_context, mesh_error, split

SMUGGLED = b"GET http://b/smuggled HTTP/1.1\r\nHost: b\r\n\r\n"

BAD = {
    "cl_and_te": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nContent-Length: 6\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 4\r\n\r\n0\r\n\r\n",
    "two_content_lengths": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\n"
                           b"Content-Length: 6\r\n\r\nhello!",
    "content_length_list": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nContent-Length: 5, 6\r\n\r\nhello!",
    "content_length_sign": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nContent-Length: +5\r\n\r\nhello",
    "obs_fold": b"GET http://b/ HTTP/1.1\r\nHost: b\r\nX-Foo: a\r\n  b\r\n\r\n",
    "space_before_colon": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nTransfer-Encoding : chunked\r\n"
                          b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "nul_in_value": b"GET http://b/ HTTP/1.1\r\nHost: b\r\nX-Foo: a\x00b\r\n\r\n",
    "ctl_in_name": b"GET http://b/ HTTP/1.1\r\nHost: b\r\nX\x01Foo: a\r\n\r\n",
    "bad_chunk_size": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk_size_overflow": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "te_not_chunked_last": b"POST http://b/ HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                           b"0\r\n\r\n",
}


def _after_400(c: HttpConn) -> str:
    """What the proxy does with the bytes after the bad request: must be 'closed', within about a second.

    A connection that stays open is not a refusal: the smuggled bytes could still be read as a request.
    """
    if c.closed_by_peer(wait=1.5):
        return "closed"
    if not c.buf:
        return "hung: still open 1.5 s after the 400"
    try:
        r = c.read_response()
        return f"answered the smuggled bytes: {r!r}"
    except (OSError, EOFError):
        return "closed"


@pytest.mark.parametrize("case", sorted(BAD))
def test_outbound_refuses_and_never_reaches_app(ab: AB, case: str) -> None:
    with HttpConn(ab.outbound) as c:
        c.send(BAD[case] + SMUGGLED)
        r = c.read_response()
        assert r.status == 400, f"{case}: {r!r}"
        assert mesh_error(r) == ("bad_request", "host1/outbound"), r
        assert _after_400(c) == "closed"
    time.sleep(0.3)  # anything the proxy forwarded would have reached the app by now
    stats = ab.b.stats()
    assert stats["requests"] == 0, f"{case}: the app saw {stats['paths']}"
    with HttpConn(ab.outbound) as c:
        assert c.request("GET", "http://b/fresh", {"Host": "b"}).status == 200
    assert ab.b.stats()["paths"] == ["/fresh"]


@pytest.mark.parametrize("case", ["cl_and_te", "two_content_lengths", "bad_chunk_size"])
def test_inbound_is_strict_too(ab: AB, case: str) -> None:
    """A caller with a valid mesh certificate talking to the inbound directly gets the same treatment."""
    cert, key = ab.mesh.cert_for("a")
    ctx = client_context(ab.mesh.ca_pem, cert, key)
    raw = socket.create_connection(split(ab.h2.inbound), timeout=5)
    with HttpConn(sock=ctx.wrap_socket(raw, server_hostname="b")) as c:
        c.send(BAD[case].replace(b"http://b/", b"/") + SMUGGLED.replace(b"http://b/", b"/"))
        r = c.read_response()
        assert r.status == 400, r
        assert mesh_error(r) == ("bad_request", "host2/inbound"), r
        assert _after_400(c) == "closed"
    time.sleep(0.3)
    assert ab.b.stats()["paths"] == []


def test_pipelined_requests_keep_their_framing(ab: AB) -> None:
    """A body that looks like a request stays a body: two requests in, two responses out, in order."""
    body = b"GET http://b/inside-body HTTP/1.1\r\nHost: b\r\n\r\n"
    chunked = b"POST http://b/second HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n" + (
        b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    with HttpConn(ab.outbound) as c:
        c.send(b"POST http://b/first HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n" % len(body) + body
               + chunked + b"GET http://b/third HTTP/1.1\r\nHost: b\r\n\r\n")
        got = [c.read_final().json() for _ in range(3)]
    assert [(g["path"], g["body_length"]) for g in got] == [
        ("/first", len(body)), ("/second", len(body)), ("/third", 0)]
    assert ab.b.stats()["paths"] == ["/first", "/second", "/third"]


def test_oversized_head_gets_431_and_never_reaches_app(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        c.send(b"GET http://b/big HTTP/1.1\r\nHost: b\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        r = c.read_response()
        assert r.status == 431, r
        assert mesh_error(r) == ("head_too_large", "host1/outbound"), r
    with HttpConn(ab.outbound) as c:
        headers = [(f"X-H{i}", "v") for i in range(500)]
        r = c.request("GET", "http://b/many", [("Host", "b"), *headers])
        assert r.status in (400, 431), f"500 headers is over the default limit of 100: {r!r}"
    time.sleep(0.3)
    assert ab.b.stats()["paths"] == []
