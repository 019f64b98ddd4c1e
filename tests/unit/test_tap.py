"""A tap's arguments, bodies decoded from an exchange's bytes, answer batches, and the CLI's lines."""

from __future__ import annotations

import msgspec
import pytest

from glassmesh.api.asks import MAX_ANSWER_BYTES, MAX_EVENTS
from glassmesh.api.tap import MAX_BODY, TapArgs, TapArgsError
from glassmesh.cli.tap_cmd import render
from glassmesh.proxy.tap import batches, body_of


def test_args_round_trip_and_bounds() -> None:
    a = TapArgs.parse({"from": "web", "to": "api", "path": "/orders", "status": "5XX", "headers": "1",
                       "body": str(MAX_BODY * 10), "side": "outbound", "seconds": "3", "secrets": "1"})
    assert (a.source, a.destination, a.status, a.headers, a.body, a.seconds) == ("web", "api", "5xx", True,
                                                                                 MAX_BODY, 3.0)
    assert a.secrets and TapArgs.parse(a.query()) == a
    assert a.status_matches(503) and not a.status_matches(200)
    assert TapArgs.parse({"status": "503"}).status_matches(503)
    assert not TapArgs.parse({"status": "503"}).status_matches(502)
    assert TapArgs.parse({}).query() == {}


@pytest.mark.parametrize(("q", "says"), [
    ({"status": "teapot"}, "status"), ({"body": "lots"}, "body"), ({"path": "orders"}, "must start with /"),
    ({"side": "sideways"}, "side"), ({"from": "a b"}, "not a service name"), ({"bogus": "1"}, "unknown"),
    ({"seconds": "-1"}, "seconds"), ({"body": "-5"}, "negative"), ({"seconds": "1e6"}, "more than 86400"),
])
def test_bad_args_are_refused_with_the_field(q: dict[str, str], says: str) -> None:
    with pytest.raises(TapArgsError, match=says):
        TapArgs.parse(q)


def test_bodies_are_decoded_from_the_bytes_chunked_or_not() -> None:
    req = b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    assert body_of(req, True) == (b"hello world", True)
    resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\npong"
    assert body_of(resp, False) == (b"pong", True)
    assert body_of(resp[:-2], False) == (b"po", False)  # cut at the recording's limit
    assert body_of(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n", False, head=True) == (b"", True)
    assert body_of(b"not http at all\r\n\r\nxx", True) == (b"", False)
    assert body_of(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n", True) == (b"", True)


def test_batches_stay_within_what_the_control_plane_takes() -> None:
    assert batches([]) == [[]]
    small = [{"i": i} for i in range(MAX_EVENTS + 5)]
    assert [len(b) for b in batches(small)] == [MAX_EVENTS, 5]
    big = [{"b": "x" * (MAX_ANSWER_BYTES // 3)} for _ in range(4)]
    for b in batches(big):
        assert len(msgspec.json.encode(b)) < MAX_ANSWER_BYTES


def test_an_event_reads_as_one_line_with_its_headers_and_bodies() -> None:
    ev = {"ts": 1800000000.5, "host": "b", "side": "inbound", "from": "web", "to": "api", "method": "POST",
          "path": "/orders", "status": 503, "duration_ms": 12.5, "request_id": "abc", "attempts": 2,
          "error": "no_endpoints", "hop": "b/inbound", "request_headers": [["host", "api"]],
          "request_body": "hel", "request_body_truncated": True}
    lines = [t.plain for t in render(ev)]
    assert lines[0].startswith("08:00:00.500Z b/inbound web -> api POST /orders 503 12.5ms")
    assert "attempts=2" in lines[0] and "id=abc" in lines[0] and "error=no_endpoints hop=b/inbound" in lines[0]
    assert lines[1:] == ["    > host: api", "    > 'hel' [truncated]"]
