"""Binary heads on a mux stream, with no socket (protocols/mux_head.py, read by protocols/http1_codec.py).

A reader of a mux stream takes a head in binary form or as HTTP/1 text, at
any message boundary, split anywhere; what it refuses is what would let the
HTTP/1 it writes on to an app read two ways.
"""

from __future__ import annotations

import pytest

from glassmesh.protocols.http1 import Framing
from glassmesh.protocols.http1_codec import Recorder, RequestReader, ResponseReader
from glassmesh.protocols.message import Data, End, Request, Response
from glassmesh.protocols.mux_head import encode_request, encode_response, response_as_http1
from tests.unit.test_http1_codec import feed, merged

GET = encode_request(b"GET", b"/x?a=1", [b"Host", b"b", b"x-request-id", b"r1"])
PUT = encode_request(b"PUT", b"/up", [b"Host", b"b", b"content-length", b"5"])


def req(binary: bool = True) -> RequestReader:
    r = RequestReader(8192, 100, Recorder())
    if binary:
        r.read_binary()
    return r


def resp(head_only: bool = False) -> ResponseReader:
    r = ResponseReader(8192, Recorder())
    r.read_binary()
    r.expect(head_only, False)
    return r


def test_the_form_is_nul_separated_fields_then_the_request_line_then_nul_lf() -> None:
    assert GET == b"\0Host\0b\0x-request-id\0r1\0GET\0/x?a=1\0\n"
    assert encode_response(204, [b"a", b"1"], [b"b", b"2"]) == b"\0a\x001\0b\x002\x00204\0\n"


def test_a_binary_request_reads_as_the_same_request_in_http1() -> None:
    http1 = b"GET /x?a=1 HTTP/1.1\r\nHost: b\r\nx-request-id: r1\r\n\r\n"
    assert feed(req(), GET) == feed(req(), http1) == [Request(b"GET", b"/x?a=1", [b"Host", b"b", b"x-request-id", b"r1"]), End()]


def test_a_body_after_a_binary_head_split_anywhere_then_more_binary_requests() -> None:
    stream = PUT + b"hello" + GET + GET
    whole = feed(req(), stream)
    assert whole == [Request(b"PUT", b"/up", [b"Host", b"b"]), Data(b"hello"), End(),
                     Request(b"GET", b"/x?a=1", [b"Host", b"b", b"x-request-id", b"r1"]), End(),
                     Request(b"GET", b"/x?a=1", [b"Host", b"b", b"x-request-id", b"r1"]), End()]
    # One byte at a time, and in pieces that cut heads and bodies anywhere: the same events.
    for size in (1, 3, 7):
        pieces = [stream[i:i + size] for i in range(0, len(stream), size)]
        assert merged(feed(req(), *pieces)) == merged(whole), size
    r = req()
    r.feed(PUT[:9])
    assert r.in_head, "a binary head under way is timed like any head"


def test_http1_and_binary_requests_take_turns_on_one_stream() -> None:
    h1 = b"GET /h1 HTTP/1.1\r\nHost: b\r\n\r\n"
    got = feed(req(), GET + h1, GET, h1)
    assert [e.target for e in got if isinstance(e, Request)] == [b"/x?a=1", b"/h1", b"/x?a=1", b"/h1"]
    # A binary head right after an HTTP/1 message in the same read is llhttp's to read, and it refuses
    # it: a sender begins a write with a binary head (proxy/http.py), never sends one behind HTTP/1 text.
    assert feed(req(), h1 + GET)[-1] == ("ERROR", 400, "bad_request")


def test_a_request_body_that_begins_with_nul_is_body_not_a_head() -> None:
    """Inside an HTTP/1 message (llhttp's), a 0x00 is the body's: only where a message begins is it a head."""
    r = req()
    got = feed(r, b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\n\r\n", b"\0\0\0\n")
    assert got == [Request(b"POST", b"/", [b"Host", b"b"]), Data(b"\0\0\0\n"), End()]


def test_an_app_connection_never_reads_binary_heads() -> None:
    got = feed(req(binary=False), GET)
    assert got == [("ERROR", 400, "bad_request")], "llhttp refuses it as HTTP/1"


@pytest.mark.parametrize(("head", "why"), [
    (encode_request(b"GET", b"/", [b"transfer-encoding ", b"chunked"]), "a name with a space"),
    (encode_request(b"GET", b"/", [b"x:y", b"1"]), "a name with a colon"),
    (encode_request(b"GET", b"/", [b"x", b"1\rX-Evil: 1"]), "a CR in a value"),
    (encode_request(b"GET", b"/a b", [b"host", b"b"]), "a space in the target"),
    (encode_request(b"GET", b"/a\tb", [b"host", b"b"]), "a tab in the target"),
    (encode_request(b"G T", b"/", [b"host", b"b"]), "a method that is no token"),
    (encode_request(b"POST", b"/", [b"host", b"b", b"transfer-encoding", b"chunked"]), "a chunked body"),
    (encode_request(b"GET", b"/", [b"host", b"b", b"connection", b"close"]), "a Connection field"),
    (encode_request(b"GET", b"/", [b"host", b"b", b"content-length", b"1", b"content-length", b"2"]), "two lengths"),
    (b"\0host\0b\0GET\n", "no NUL before the LF"),
    (b"\0host\0GET\0/\0\n", "half a field"),
])
def test_a_binary_request_that_could_read_two_ways_is_refused(head: bytes, why: str) -> None:
    r = req()
    got = feed(r, head)
    assert got and got[-1][0] == "ERROR" and got[-1][1] in (400, 501), (why, got)
    assert not any(isinstance(e, Request) for e in got), why
    assert feed(r, GET) == [], "the reader is dead: nothing after a refused head"


def test_a_name_of_the_previous_head_changed_in_place_is_checked_again() -> None:
    """Names are compared with the previous head's before the set (Known.check): a changed one is checked anew."""
    r = req()
    assert feed(r, GET)[-1] == End()
    bad = encode_request(b"GET", b"/", [b"Host", b"b", b"x-request-id ", b"r2"])
    assert feed(r, bad)[-1] == ("ERROR", 400, "bad_request")


def test_a_binary_head_that_never_ends_is_cut_at_the_limit() -> None:
    r = req()
    assert feed(r, b"\0x\0" + b"a" * 5000) == []
    assert feed(r, b"a" * 5000) == [("ERROR", 431, "head_too_large")]


def test_a_binary_response_with_a_body_then_one_in_http1_on_the_same_stream() -> None:
    r = resp()
    head = encode_response(200, [b"server", b"app", b"content-length", b"3"], [b"glassmesh-trail", b"x"])
    got = feed(r, head + b"a", b"bc")
    assert got == [Response(200, [b"server", b"app"]), Data(b"a"), Data(b"bc"), End()]
    assert (r.framing, r.length, r.keep_alive, r.rh is not None and r.rh.trail) == (Framing.LENGTH, 3, True, b"x")
    r.expect(False, False)
    assert feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\0\n") == [Response(200, []), Data(b"\0\n"), End()]
    r.expect(False, False)
    assert feed(r, encode_response(204, [], [])) == [Response(204, []), End()]


def test_the_binary_answer_to_head_has_no_body() -> None:
    r = resp(head_only=True)
    assert feed(r, encode_response(200, [b"content-length", b"5000"], [])) == [Response(200, []), End()]
    assert r.keep_alive and not r.awaiting


@pytest.mark.parametrize(("data", "why"), [
    (encode_response(200, [b"transfer-encoding", b"chunked"], []), "a chunked body is never binary"),
    (encode_response(200, [], []), "no length: read to the close, never binary"),
    (encode_response(200, [b"content-length", b"0", b"connection", b"close"], []), "a Connection field"),
    (encode_response(200, [b"content-length", b"0"], [b"bad name", b"1"]), "a name that is no token"),
    (b"\0content-length\x000\x00101\0\n", "a switch is never binary"),
    (b"\0content-length\x000\x0020\0\n", "a status of two digits"),
])
def test_a_binary_response_that_could_read_two_ways_is_a_502(data: bytes, why: str) -> None:
    assert feed(resp(), data) == [("ERROR", 502, "upstream_protocol_error")], why


def test_a_binary_response_to_no_request_is_an_error() -> None:
    r = resp()
    ok = encode_response(200, [b"content-length", b"0"], [])
    assert feed(r, ok + ok) == [Response(200, []), End(), ("ERROR", 502, "upstream_protocol_error")]


def test_a_recording_shows_a_binary_response_head_as_http1() -> None:
    r = resp()
    data = encode_response(200, [b"server", b"app", b"content-length", b"2"], []) + b"ok"
    assert r.as_http1(data) == b"HTTP/1.1 200 OK\r\nserver: app\r\ncontent-length: 2\r\n\r\nok"
    assert response_as_http1(data, data.find(b"\n")) == r.as_http1(data)
    r.feed(data)
    assert r.as_http1(b"HTTP/1.1 200 OK\r\n\r\n") == b"HTTP/1.1 200 OK\r\n\r\n"


def test_what_a_reader_remembers_of_names_is_bounded() -> None:
    """A peer sending new names in every head cannot grow a stream's memory of checked names past its bound."""
    from glassmesh.protocols.mux_head import Known

    k = Known()
    for i in range(1000):
        assert k.token(b"x-name-%d" % i)
    assert k.token(b"y" * 5000) and not k.token(b"bad name")
    assert len(k.names) == 64 and all(len(n) <= 64 for n in k.names)
