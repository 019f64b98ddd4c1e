"""An HTTP/2 client's first request answered with why the mesh cannot carry it (no I/O).

Until HTTP/2 is carried, a client that speaks it to an HTTP/1.1 listener (a gRPC
client, `curl --http2-prior-knowledge`) must still be told why, in a form it can
show. What each answer showed (grpcio 1.85, curl 7.88):

- an HTTP/1.1 505: grpcio "Trying to connect an http1.x server (HTTP status 505)",
  curl "Empty reply from server";
- a bare GOAWAY with the message as debug data: grpcio DEADLINE_EXCEEDED (the message
  only in its debug log), curl "Error in the HTTP2 framing layer";
- an HTTP/2 response on the client's first stream, as here: `:status 505` with the
  message as a text body, and gRPC's `grpc-status: 14` (UNAVAILABLE) with the message
  as `grpc-message`: grpcio raises UNAVAILABLE with the message as its details, curl
  prints the message. A GOAWAY (NO_ERROR, the message as debug data) then ends the
  connection; with HTTP_1_1_REQUIRED instead, grpcio fails on an internal assertion.

Only the frame layer is read (a 9-byte header per frame); header blocks are never
decoded, and the answer's header block uses HPACK literals that need no table.
"""

from __future__ import annotations

import struct
from typing import Final

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PREFACE_TAIL: Final = b"SM\r\n\r\n"  # what follows the part llhttp reads as a request head
MESSAGE: Final = ("glassmesh carries HTTP/1.1 and TCP; HTTP/2 and gRPC are not supported yet; "
                  "a tcp link carries them without per-request features")

_DATA, _HEADERS, _SETTINGS, _GOAWAY = 0, 1, 4, 7
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
_GRPC_UNAVAILABLE: Final = b"14"
# What this side reads before the client's first request; more is not a client we can help.
MAX_BUFFER: Final = 64 * 1024


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def _int(n: int, prefix_bits: int = 7) -> bytes:
    """An HPACK integer (RFC 7541 5.1) with a zero first-byte pattern."""
    top = (1 << prefix_bits) - 1
    if n < top:
        return bytes((n,))
    out = bytearray((top,))
    n -= top
    while n >= 128:
        out.append((n & 127) | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + _int(len(name)) + name + _int(len(value)) + value


def _grpc_message(text: str) -> bytes:
    """grpc-message is percent-encoded outside printable ASCII (and '%' itself)."""
    return b"".join(bytes((c,)) if 0x20 <= c < 0x7F and c != 0x25 else b"%%%02X" % c for c in text.encode())


class Refusal:
    """Reads an HTTP/2 client's frames up to its first request, then answers it and says goodbye.

    feed() returns the bytes to send; `done` says the connection may close once they are sent.
    """

    def __init__(self, message: str = MESSAGE, headers: list[tuple[bytes, bytes]] | None = None,
                 after_request_line: bool = True) -> None:
        self.message = message
        self.headers = headers or []
        self.buf = b""
        # llhttp reads "PRI * HTTP/2.0\r\n\r\n" as a request head; the preface's "SM\r\n\r\n" follows.
        self.in_preface = after_request_line
        self.done = False

    def start(self) -> bytes:
        """The server's connection preface: an empty SETTINGS frame."""
        return frame(_SETTINGS, 0, 0, b"")

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        buf = self.buf + data
        if self.in_preface:
            i = buf.find(_PREFACE_TAIL)
            if i < 0:
                self.buf = buf
                return self._give_up() if len(buf) > len(_PREFACE_TAIL) else b""
            buf = buf[i + len(_PREFACE_TAIL):]
            self.in_preface = False
        out: list[bytes] = []
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            buf = buf[9 + length:]
            if kind == _SETTINGS and not flags & _ACK:
                out.append(frame(_SETTINGS, _ACK, 0, b""))
            elif kind == _HEADERS and stream:
                out.append(self.answer(stream))
                self.done = True
                buf = b""
                break
        self.buf = buf
        if not self.done and len(buf) > MAX_BUFFER:
            out.append(self._give_up())
        return b"".join(out)

    def answer(self, stream: int) -> bytes:
        """505 with the message as body, gRPC's UNAVAILABLE with it, then GOAWAY after this stream."""
        text = self.message.encode()
        grpc = _literal(b"grpc-status", _GRPC_UNAVAILABLE) + _literal(b"grpc-message", _grpc_message(self.message))
        head = _literal(b":status", b"505") + _literal(b"content-type", b"text/plain; charset=utf-8")
        head += b"".join(_literal(n, v) for n, v in self.headers) + grpc
        return b"".join((
            frame(_HEADERS, _END_HEADERS, stream, head),
            frame(_DATA, 0, stream, text + b"\n"),
            frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, grpc),  # trailers, for gRPC clients
            self.goaway(stream),
        ))

    def goaway(self, last_stream: int = 0) -> bytes:
        """NO_ERROR: HTTP_1_1_REQUIRED made grpcio fail on an internal assertion instead of showing the answer."""
        return frame(_GOAWAY, 0, 0, struct.pack(">II", last_stream, 0) + self.message.encode())

    def _give_up(self) -> bytes:
        self.done = True
        self.buf = b""
        return self.goaway()
