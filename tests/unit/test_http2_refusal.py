"""The HTTP/2 refusal's frame handling, byte by byte: what a client that sent the preface gets back."""

from __future__ import annotations

import struct

from glassmesh.protocols.http2 import MESSAGE, PREFACE, Refusal, frame

SETTINGS = frame(4, 0, 0, struct.pack(">HI", 3, 100))
HEADERS_1 = frame(1, 5, 1, b"\x82\x86\x84")  # a header block is never decoded


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    while data:
        n = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:9 + n]))
        data = data[9 + n:]
    return out


def test_first_request_is_answered_with_505_grpc_unavailable_and_goaway() -> None:
    r = Refusal(headers=[(b"glassmesh-error", b"http2_not_supported; hop=h/outbound")])
    assert frames(r.start()) == [(4, 0, 0, b"")]
    rest = PREFACE[len(b"PRI * HTTP/2.0\r\n\r\n"):]
    out = r.feed(rest[:3]) + r.feed(rest[3:] + SETTINGS[:5]) + r.feed(SETTINGS[5:] + HEADERS_1 + b"more")
    got = frames(out)
    assert [(k, f, s) for k, f, s, _ in got] == [(4, 1, 0), (1, 4, 1), (0, 0, 1), (1, 5, 1), (7, 0, 0)]
    head = got[1][3]
    for piece in (b":status", b"505", b"grpc-status", b"14", b"grpc-message", MESSAGE.encode(),
                  b"glassmesh-error", b"http2_not_supported; hop=h/outbound"):
        assert piece in head
    assert got[2][3] == MESSAGE.encode() + b"\n"
    assert got[4][3] == struct.pack(">II", 1, 0) + MESSAGE.encode()
    assert r.done and r.feed(HEADERS_1) == b""


def test_a_client_that_never_sends_a_request_is_sent_away() -> None:
    r = Refusal()
    out = r.feed(b"SM\r\n\r\n" + frame(0, 0, 1, b"x" * 100_000)[:70_000])  # more than it holds
    assert r.done and frames(out)[-1][0] == 7
    r = Refusal()
    assert frames(r.feed(b"not the preface at all")) == [(7, 0, 0, struct.pack(">II", 0, 0) + MESSAGE.encode())]
