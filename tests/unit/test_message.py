"""The version-neutral message model: which trailer fields cross, and how HTTP/1 ends a chunked body with them."""

from __future__ import annotations

from glassmesh.protocols.http1 import LAST_CHUNK, last_chunk
from glassmesh.protocols.message import Data, End, Request, Response, Trailers, trailer_fields


def test_trailer_fields_keep_end_to_end_ones_in_order() -> None:
    got = trailer_fields([b"grpc-status", b"0", b"Host", b"evil", b"x-sum", b"abc", b"Glassmesh-Trail", b"forged",
                          b"x_under", b"1", b"Content-Length", b"9", b"X-Request-Id", b"r", b"grpc-message", b"ok"])
    assert got == [b"grpc-status", b"0", b"x-sum", b"abc", b"grpc-message", b"ok"]
    assert trailer_fields([]) == []


def test_last_chunk_writes_the_trailer_section() -> None:
    assert last_chunk(None) == LAST_CHUNK == b"0\r\n\r\n"
    assert last_chunk([]) == LAST_CHUNK
    assert last_chunk([b"grpc-status", b"0", b"x-sum", b"abc"]) == b"0\r\ngrpc-status: 0\r\nx-sum: abc\r\n\r\n"


def test_events_compare_by_value() -> None:
    assert Request(b"GET", b"/", [b"host", b"b"]) == Request(b"GET", b"/", [b"host", b"b"])
    assert Response(200, []) != Response(204, [])
    assert [Data(b"x"), Trailers([b"a", b"1"]), End()] == [Data(b"x"), Trailers([b"a", b"1"]), End()]
    assert Data(b"x") != Data(b"y")
