"""The HTTP/1.1 codec with no socket: bytes in, events out (protocols/http1_codec.py).

Each case feeds a reader what a peer sends, in one piece or split anywhere,
and checks the events it gives, as the proxy's connections will act on them.
"""

from __future__ import annotations

from typing import Any

import pytest

from glassmesh.protocols.http1 import BadMessage, Framing, RequestHead, ResponseHead
from glassmesh.protocols.http1_codec import (
    DATA,
    END,
    ERROR,
    HEAD,
    INTERIM,
    NAMES,
    PREFACE,
    UPGRADE,
    Recorder,
    RequestReader,
    ResponseReader,
)
from glassmesh.protocols.message import Data, End, Request, Response, Trailers


def _model(kind: int, arg: Any) -> Any:
    """An event as the neutral model says it (message.py), for comparing."""
    if kind == HEAD and isinstance(arg, RequestHead):
        return Request(arg.method, arg.target, list(arg.forward))
    if kind == HEAD and isinstance(arg, ResponseHead):
        return Response(-1, list(arg.forward))
    if kind == INTERIM:
        return arg
    if kind == DATA:
        return Data(arg)
    if kind == END:
        return [Trailers(arg), End()] if arg else End()
    if kind == ERROR:
        assert isinstance(arg, BadMessage)
        return ("ERROR", arg.status, arg.reason)
    return (NAMES[kind], arg)


def feed(reader: RequestReader | ResponseReader, *pieces: bytes) -> list[Any]:
    out: list[Any] = []
    for p in pieces:
        reader.feed(p)
        ev = events(reader)
        for i in range(0, len(ev), 2):
            m = _model(ev[i], ev[i + 1])
            out.extend(m if isinstance(m, list) else [m])
            if ev[i] == HEAD and isinstance(reader, ResponseReader):
                out[-1].status = reader.status  # one final answer per request
    return out


def events(reader: RequestReader | ResponseReader) -> list[Any]:
    """What the reader told since last asked: kind, payload, kind, payload, ..."""
    rec = reader.sink
    assert isinstance(rec, Recorder)
    return rec.take()


def merged(events: list[Any]) -> list[Any]:
    """Data events joined, so that a split feed compares with a whole one."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, Data) and out and isinstance(out[-1], Data):
            out[-1] = Data(out[-1].data + e.data)
        else:
            out.append(e)
    return out


def req() -> RequestReader:
    return RequestReader(8192, 100, Recorder())


CHUNKED_POST = (b"POST /up HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"
                b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: abc\r\nhost: evil\r\n\r\n")


def test_a_request_is_a_head_body_events_trailers_and_its_end() -> None:
    whole = feed(req(), CHUNKED_POST)
    assert whole == [Request(b"POST", b"/up", [b"Host", b"b", b"Trailer", b"x-sum"]),
                     Data(b"hello"), Data(b" world"), Trailers([b"x-sum", b"abc"]), End()]
    # Split at every byte: the same events, body pieces aside.
    r = req()
    assert merged(feed(r, *[CHUNKED_POST[i:i + 1] for i in range(len(CHUNKED_POST))])) == merged(whole)


def test_the_head_says_framing_and_connection() -> None:
    r = req()
    r.feed(b"GET / HTTP/1.0\r\nHost: b\r\n\r\n")
    ev = events(r)
    h = ev[1]
    assert (ev[0], h.method, h.body_framing, h.keep_alive, h.http10) == (HEAD, b"GET", Framing.NONE, False, True)
    r = req()
    r.feed(b"PUT /x HTTP/1.1\r\nHost: b\r\nContent-Length: 3\r\n\r\nabc")
    h = events(r)[1]
    assert (h.body_framing, h.cl, h.keep_alive, h.http10) == (Framing.LENGTH, b"3", True, False)


def test_pipelined_requests_come_out_in_order() -> None:
    r = req()
    got = feed(r, b"GET /1 HTTP/1.1\r\nHost: b\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\n\r\nGET /3 HTTP/1.1\r\nHo")
    assert got == [Request(b"GET", b"/1", [b"Host", b"b"]), End(), Request(b"GET", b"/2", [b"Host", b"b"]), End()]
    assert r.in_head, "the third head has begun: the request timeout watches it"
    assert feed(r, b"st: b\r\n\r\n") == [Request(b"GET", b"/3", [b"Host", b"b"]), End()]
    assert not r.in_head


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: b\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
    (b"GET / HTTP/1.1\r\nHost: b\r\nX: a\r\n b\r\n\r\n", 400, "bad_request"),  # obs-fold
    (b"POST / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: b\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, "head_too_large"),
])
def test_malformed_requests_are_an_error_event_and_nothing_after(data: bytes, status: int, reason: str) -> None:
    r = req()
    got = feed(r, data)
    assert got[-1] == ("ERROR", status, reason)
    assert not any(isinstance(e, Request) for e in got) or b"zz" in data, "a refused head is no request"
    assert feed(r, b"GET / HTTP/1.1\r\nHost: b\r\n\r\n") == [], "a dead reader reads nothing more"


def test_a_head_that_never_ends_is_cut_after_the_limit() -> None:
    """Bounded by the limit plus at most the read in which the head began: llhttp reports no field until its line ends."""
    r = req()
    assert feed(r, b"GET / HTTP/1.1\r\nHost: b\r\nX: " + b"a" * 5000) == []
    assert feed(r, b"a" * 5000) == []
    assert feed(r, b"a" * 5000) == [("ERROR", 431, "head_too_large")]


def test_an_error_after_a_good_request_keeps_the_good_one() -> None:
    got = feed(req(), b"GET /1 HTTP/1.1\r\nHost: b\r\n\r\nGET /2 HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n")
    assert got == [Request(b"GET", b"/1", [b"Host", b"b"]), End(), ("ERROR", 400, "bad_request")]


def test_too_many_fields() -> None:
    r = RequestReader(1 << 20, 3, Recorder())
    got = feed(r, b"GET / HTTP/1.1\r\nHost: b\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n")
    assert got == [("ERROR", 431, "head_too_large")]


def test_upgrade_hands_over_the_bytes_after_the_head() -> None:
    got = feed(req(), b"GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    assert got[0].method == b"GET" and got[1:] == [End(), ("UPGRADE", b"\x81\x05hello")]


def test_the_http2_preface_is_named() -> None:
    got = feed(req(), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04")
    assert got == [("PREFACE", b"SM\r\n\r\n\x00\x00\x12\x04")]
    assert PREFACE and UPGRADE


def resp(head_only: bool = False, upgrade: bool = False) -> ResponseReader:
    r = ResponseReader(8192, Recorder())
    r.expect(head_only, upgrade)
    return r


def test_a_response_with_trailers_and_keep_alive() -> None:
    r = resp()
    got = feed(r, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n",
               b"0\r\ngrpc-status: 0\r\nglassmesh-trail: forged\r\n\r\n")
    assert got == [Response(200, [b"X-A", b"1"]), Data(b"abc"), Trailers([b"grpc-status", b"0"]), End()]
    assert (r.framing, r.keep_alive) == (Framing.CHUNKED, True)
    r.expect(False, False)
    got = feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    assert got == [Response(200, []), Data(b"ok"), End()] and not r.keep_alive


def test_the_answer_to_head_has_no_body_whatever_it_says() -> None:
    r = resp(head_only=True)
    assert feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n") == [Response(200, []), End()]
    assert r.keep_alive
    r.expect(False, False)  # the same connection reads the next answer from its start
    assert feed(r, b"HTTP/1.1 204 No Content\r\n\r\n") == [Response(204, []), End()]


def test_interim_answers_then_the_final_one() -> None:
    r = resp()
    got = feed(r, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert got == [Response(100, []), Response(103, [b"Link", b"</a>"]), Response(200, []), End()]
    assert r.rh is not None and r.rh.forward == [], "the final head is not the interim one's"


def test_a_second_answer_to_one_request_is_an_error() -> None:
    r = resp()
    got = feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nX-Evil: 1\r\n\r\n")
    assert got == [Response(200, []), Data(b"ok"), End(), ("ERROR", 502, "upstream_protocol_error")]
    assert r.rh is not None and r.rh.forward == [], "the answer acted on is not overwritten by the stray one"


def test_101_switches_only_when_asked() -> None:
    r = resp(upgrade=True)
    got = feed(r, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi")
    assert got == [Response(101, []), ("UPGRADE", b"\x81\x02hi")]
    assert r.rh is not None and r.rh.upgrade == b"websocket"


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTPX 200\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 9000,
])
def test_malformed_responses_are_an_error_event(data: bytes) -> None:
    assert feed(resp(), data)[-1] == ("ERROR", 502, "upstream_protocol_error")

