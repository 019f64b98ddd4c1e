"""The HTTP/1.1 rules the proxy applies on top of llhttp, tested without sockets."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glassmesh.protocols.errors import error_response
from glassmesh.protocols.http1 import (
    BadMessage,
    Framing,
    check_request_headers,
    new_traceparent,
    response_framing,
    service_of,
    split_target,
    valid_traceparent,
)


def test_content_length_and_chunked_framing():
    assert check_request_headers([(b"Content-Length", b"12")]) == (Framing.LENGTH, 12)
    assert check_request_headers([(b"Transfer-Encoding", b"chunked")]) == (Framing.CHUNKED, 0)
    assert check_request_headers([(b"Host", b"b")]) == (Framing.NONE, 0)
    assert check_request_headers([(b"Content-Length", b"0")]) == (Framing.NONE, 0)


@pytest.mark.parametrize(
    "headers, words",
    [
        ([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], "ambiguous"),
        ([(b"Content-Length", b"5"), (b"Content-Length", b"6")], "more than one Content-Length"),
        ([(b"Content-Length", b"5"), (b"content-length", b"5")], "more than one Content-Length"),
        ([(b"Transfer-Encoding", b"gzip, chunked")], "unsupported Transfer-Encoding"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], "more than one Transfer"),
        ([(b"Content-Length", b"-1")], "invalid Content-Length"),
        ([(b"Content-Length", b"1e3")], "invalid Content-Length"),
        ([(b"Host", b"a"), (b"host", b"b")], "more than one Host"),
        ([(b"Bad Name", b"x")], "invalid header name"),
        ([(b"X", b"a\nb")], "invalid character"),
    ],
)
def test_smuggling_shapes_are_refused(headers, words):
    with pytest.raises(BadMessage) as e:
        check_request_headers(headers)
    assert words in str(e.value)


def test_response_framing_knows_bodiless_responses():
    cl = [(b"content-length", b"10")]
    assert response_framing(200, cl, b"GET") == (Framing.LENGTH, 10)
    assert response_framing(200, cl, b"HEAD") == (Framing.NONE, 0)
    assert response_framing(204, [], b"GET") == (Framing.NONE, 0)
    assert response_framing(304, cl, b"GET") == (Framing.NONE, 0)
    assert response_framing(200, [], b"GET") == (Framing.CLOSE, 0)
    assert response_framing(200, [(b"transfer-encoding", b"chunked")], b"GET") == (Framing.CHUNKED, 0)
    with pytest.raises(BadMessage):
        response_framing(200, [(b"content-length", b"1"), (b"content-length", b"2")], b"GET")


def test_split_target_proxy_form_and_host_header():
    assert split_target(b"GET", b"http://b/x?y=1", None) == (b"b", b"/x?y=1")
    assert split_target(b"GET", b"http://b:8080", None) == (b"b:8080", b"/")
    assert split_target(b"GET", b"http://b?q", None) == (b"b", b"/?q")
    assert split_target(b"GET", b"/x", b"b") == (b"b", b"/x")
    with pytest.raises(BadMessage):
        split_target(b"GET", b"/x", None)
    with pytest.raises(BadMessage):
        split_target(b"GET", b"http://user@b/", None)
    with pytest.raises(BadMessage):
        split_target(b"CONNECT", b"b:443", b"b")


def test_service_of_authority():
    assert service_of(b"b") == "b"
    assert service_of(b"B:80") == "b"
    assert service_of(b"payments") == "payments"


def test_traceparent():
    tp = new_traceparent()
    assert valid_traceparent(tp)
    assert not valid_traceparent(b"00-xyz")


@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=12))
def test_header_checks_never_crash(headers):
    try:
        check_request_headers(headers)
    except BadMessage:
        pass


def test_error_response_names_hop_and_reason():
    raw = error_response("no_endpoints", host="h1", side="outbound", service="b", request_id=b"r1")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"glassmesh-error: no_endpoints; hop=h1/outbound" in head
    doc = json.loads(body)
    assert doc["error"] == "no_endpoints" and doc["hop"] == {"host": "h1", "side": "outbound", "proxy": "glassmesh"}
    assert doc["service"] == "b" and doc["request_id"] == "r1"
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)
