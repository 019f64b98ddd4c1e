"""The HTTP/1.1 rules the proxy applies on top of llhttp, tested without sockets."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glassmesh.protocols.errors import error_response
from glassmesh.protocols.http1 import (
    BadMessage,
    Framing,
    RequestHead,
    ResponseHead,
    header_pairs,
    new_traceparent,
    service_of,
    split_target,
    valid_traceparent,
)


def flat(headers):
    return [x for pair in headers for x in pair]


def req(headers):
    return RequestHead(flat(headers))


def resp(headers):
    return ResponseHead(flat(headers))


def test_content_length_and_chunked_framing():
    assert req([(b"Content-Length", b"12")]).framing() == (Framing.LENGTH, 12)
    assert req([(b"Transfer-Encoding", b"chunked")]).framing() == (Framing.CHUNKED, 0)
    assert req([(b"Host", b"b")]).framing() == (Framing.NONE, 0)
    assert req([(b"Content-Length", b"0")]).framing() == (Framing.NONE, 0)


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
    ],
)
def test_smuggling_shapes_are_refused(headers, words):
    with pytest.raises(BadMessage) as e:
        req(headers).framing()
    assert words in str(e.value)


def test_request_head_sorts_headers_in_one_pass():
    h = req([
        (b"Host", b"b"), (b"Connection", b"keep-alive, X-Secret"), (b"X-Secret", b"1"), (b"Accept", b"*/*"),
        (b"glassmesh-source", b"spiffe://evil"), (b"Keep-Alive", b"timeout=5"), (b"traceparent", b"bogus"),
        (b"X-Request-Id", b"r1"), (b"Upgrade", b"websocket"), (b"Content-Length", b"3"),
    ])
    h.drop_connection_listed()
    assert header_pairs(h.forward) == [(b"Host", b"b"), (b"Accept", b"*/*"), (b"X-Request-Id", b"r1")]
    assert (h.host, h.rid, h.tp, h.upgrade, h.cl) == (b"b", b"r1", None, b"websocket", b"3")
    h.set_host(b"b:80")
    assert header_pairs(h.forward) == [(b"Accept", b"*/*"), (b"X-Request-Id", b"r1"), (b"host", b"b:80")]
    assert h.host == b"b:80"


def test_response_framing_knows_bodiless_responses():
    cl = [(b"content-length", b"10")]
    assert resp(cl).framing(200, b"GET") == (Framing.LENGTH, 10)
    assert resp(cl).framing(200, b"HEAD") == (Framing.NONE, 0)
    assert resp([]).framing(204, b"GET") == (Framing.NONE, 0)
    assert resp(cl).framing(304, b"GET") == (Framing.NONE, 0)
    assert resp([]).framing(200, b"GET") == (Framing.CLOSE, 0)
    assert resp([(b"transfer-encoding", b"chunked")]).framing(200, b"GET") == (Framing.CHUNKED, 0)
    with pytest.raises(BadMessage):
        resp([(b"content-length", b"1"), (b"content-length", b"2")])
    r = resp([(b"glassmesh-trail", b"h2/inbound;dur=1"), (b"Server", b"x"), (b"Connection", b"close")])
    assert r.trail == b"h2/inbound;dur=1" and header_pairs(r.forward) == [(b"Server", b"x")]


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


def test_ids_are_unique_well_formed_and_differ_between_workers():
    import re

    from glassmesh.protocols import http1

    rids = [http1.new_request_id() for _ in range(5000)]
    tps = [http1.new_traceparent() for _ in range(5000)]
    assert len(set(rids)) == len(rids) and all(re.fullmatch(rb"[0-9a-f]{24}", r) for r in rids)
    assert len({t[3:35] for t in tps}) == len(tps) and len({t[36:52] for t in tps}) == len(tps)
    assert all(valid_traceparent(t) and t[36:52] != b"0" * 16 for t in tps)
    before = http1.new_request_id()
    http1.reseed()  # what a forked worker does: its ids share nothing with its parent's
    assert http1.new_request_id()[:16] != before[:16]


def test_ids_minted_together_are_as_unique_as_ids_minted_apart():
    import re

    from glassmesh.protocols import http1

    pairs = [http1.new_request_id_and_traceparent() for _ in range(5000)] + [
        (http1.new_request_id(), http1.new_traceparent()) for _ in range(100)]
    rids = [r for r, _ in pairs]
    tps = [t for _, t in pairs]
    assert len(set(rids)) == len(rids) and all(re.fullmatch(rb"[0-9a-f]{24}", r) for r in rids)
    assert len({t[3:35] for t in tps}) == len(tps) and len({t[36:52] for t in tps}) == len(tps)
    assert all(valid_traceparent(t) and t[36:52] != b"0" * 16 for t in tps)
    http1.set_counter(0xFFFFFFFF)
    r, t = http1.new_request_id_and_traceparent()
    assert r[16:] == b"00000001" and r[:16] != rids[-1][:16] and valid_traceparent(t), "the wrap draws anew"


def test_ids_do_not_repeat_when_the_counter_wraps():
    from glassmesh.protocols import http1

    http1.set_counter(0xFFFFFFFF - 2)
    rids = [http1.new_request_id() for _ in range(3)]
    tps = [http1.new_traceparent() for _ in range(3)]
    # The counter passed 2**32 - 1 on the way: the random parts were drawn again.
    assert rids[0][:16] == rids[1][:16] and rids[2][:16] != rids[0][:16]
    assert rids[1][16:] == b"ffffffff" and rids[2][16:] == b"00000001"
    assert all(valid_traceparent(t) for t in tps) and len(set(rids)) == 3 and len(set(tps)) == 3


@given(st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=12))
def test_header_checks_never_crash(headers):
    try:
        h = req(headers)
        h.drop_connection_listed()
        h.set_host(b"b")
        h.framing()
    except BadMessage:
        return
    # The flat list stays in (name, value) pairs, each one a header that was sent, in order.
    kept = header_pairs(h.forward)
    assert len(h.forward) == 2 * len(kept) and kept[-1] == (b"host", b"b")
    it = iter(headers)
    assert all(pair in it for pair in kept[:-1])


def test_error_response_names_hop_and_reason():
    raw = error_response("no_endpoints", host="h1", side="outbound", service="b", request_id=b"r1")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"glassmesh-error: no_endpoints; hop=h1/outbound" in head
    doc = json.loads(body)
    assert doc["error"] == "no_endpoints" and doc["hop"] == {"host": "h1", "side": "outbound", "proxy": "glassmesh"}
    assert doc["service"] == "b" and doc["request_id"] == "r1"
    assert int(head.split(b"content-length: ")[1].split(b"\r\n")[0]) == len(body)


def test_every_special_header_is_recognised_in_any_spelling():
    from glassmesh.protocols import http1

    for table in (http1._REQUEST_KIND, http1._RESPONSE_KIND):
        cache = http1._Spellings(table)
        for name, kind in table.items():
            for spelling in (name, name.upper(), name.title(), name.capitalize()):
                for _ in range(2):  # the second time as a kept spelling
                    assert http1._kind(spelling, cache) == kind, spelling
    cache = http1._Spellings(http1._REQUEST_KIND)
    assert http1._kind(b"User-Agent", cache) == http1._FORWARD
    assert http1._kind(b"", cache) == http1._FORWARD
    assert http1._kind(b"x" * 40, cache) == http1._FORWARD
    # A name whose first byte shares a letter's slot ("(" and "h": the same low five bits) is compared,
    # never taken for the special name of that slot.
    assert http1._kind(b"(ost", cache) == http1._FORWARD and http1._kind(b"HOST", cache) == http1._H_HOST
    # Names of no special shape are forwarded without keeping them.
    cache = http1._Spellings(http1._RESPONSE_KIND)
    kept = cache.spellings()
    assert [http1._kind(n, cache) for n in (b"Content-Type", b"Date", b"Server")] == [http1._FORWARD] * 3
    assert cache.spellings() == kept


def test_the_kept_spellings_stay_bounded():
    from glassmesh.protocols import http1

    cache = http1._Spellings(http1._REQUEST_KIND)
    kept = cache.spellings()
    for i in range(3000):  # names shaped like x-request-id (x, 12 bytes) pass the first filter
        assert http1._kind(b"x-%010d" % i, cache) == http1._FORWARD
    assert http1._kind(b"t" * 200, cache) == http1._FORWARD
    assert cache.spellings() <= kept + http1._SPELLINGS_MAX
    # Past the bound, names are still classified right, in any spelling.
    assert http1._kind(b"X-Request-ID", cache) == http1._H_RID
    assert http1._kind(b"x-REQUEST-id", cache) == http1._H_RID
    assert http1._kind(b"Content-LENGTH", cache) == http1._H_CL


_TP_ALPHABET = b"0123456789abcdefABCDEF-xg \t"


@given(st.one_of(
    st.binary(max_size=60),
    st.lists(st.sampled_from(list(_TP_ALPHABET)), min_size=50, max_size=58).map(bytes),
    st.integers(0, 54).flatmap(lambda i: st.sampled_from(list(_TP_ALPHABET)).map(
        lambda c: bytearray(new_traceparent())[:i] + bytes([c]) + bytearray(new_traceparent())[i + 1:]).map(bytes)),
))
def test_traceparent_check_is_the_w3c_rule(value):
    from glassmesh.protocols import http1

    assert valid_traceparent(value) == bool(http1._TRACEPARENT.fullmatch(value))


@given(st.one_of(st.binary(max_size=24), st.from_regex(rb"\A[0-9]{1,20}\Z"),
                 st.from_regex(rb"\A[ \t]*[0-9]{1,5}[ \t]*\Z")))
def test_content_length_is_read_by_the_regex_rule(value):
    """The byte loop that replaced bytes.isdigit() and int() takes exactly 1 to 18 ASCII digits."""
    import re

    from glassmesh.protocols import http1

    want = int(value) if re.fullmatch(rb"[0-9]{1,18}", value) else -1
    assert http1._length(value) == want
    assert http1._stripped(value) == value.strip(b" \t")


def test_request_head_notes_a_connection_header_in_any_form():
    """Whether a Connection or Proxy-Connection header came decides how the HTTP version is read."""
    assert not req([(b"Host", b"b")]).says_connection
    assert req([(b"Host", b"b"), (b"Connection", b"keep-alive")]).says_connection
    assert req([(b"Host", b"b"), (b"PROXY-CONNECTION", b"keep-alive")]).says_connection
    h = req([(b"Proxy-Connection", b"keep-alive"), (b"Content-Length", b" 12 ")])
    assert h.framing() == (Framing.LENGTH, 12) and h.forward == []


def test_status_lines_carry_the_registered_phrase_and_none_is_unknown():
    from glassmesh.protocols.http1 import status_line

    assert status_line(201) == b"HTTP/1.1 201 Created"
    assert status_line(429) == b"HTTP/1.1 429 Too Many Requests"
    assert status_line(413) == b"HTTP/1.1 413 Content Too Large", "RFC 9110's name over the stdlib's older one"
    assert status_line(299) == b"HTTP/1.1 299 ", "an unregistered status: an empty phrase (RFC 9112), not 'Unknown'"
    assert status_line(799) == b"HTTP/1.1 799 "
