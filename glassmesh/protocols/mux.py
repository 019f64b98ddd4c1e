"""glassmesh-mux/1: many virtual connections over one mutual TLS connection between two proxies.

Why: with one TLS connection per in-flight request, every request costs a
TLS write and a TLS read (two system calls and two wake-ups) on each proxy.
Multiplexed, the frames of every request that is ready in one loop turn go
out in one write and arrive in one read. Each virtual connection (a stream)
carries exactly the bytes a dedicated connection would (HTTP/1.1 here), so
all HTTP semantics stay in one place, and half-close is a flag. From minor 3
a message head may be binary instead of HTTP/1 text (protocols/mux_head.py):
the same fields, written and read without an HTTP/1 parser.

Frame: a 10-byte header, then `length` bytes of payload.

    length u32 | type u8 | flags u8 | stream u32

    DATA    payload: stream bytes. flags: OPEN (first frame of a stream),
            FIN (the sender will send no more on this stream), TCP (with OPEN: the
            stream carries the raw bytes of a tcp link to the service the connection's
            SNI names, not HTTP; the accepting side connects to an instance at once).
    WINDOW  payload: u32, more bytes the receiver can take on this stream.
    RESET   payload: a reason (utf-8); the stream is gone both ways. A tcp stream whose
            instance could not be reached is reset with the reason code
            (connect_refused, connect_timeout, no_instances).
    SETTINGS stream 0, sent once by each side, the accepting side's first (the connecting
            side's goes out with its first stream). payload: u32, how many worker
            processes share the sender's port (the connecting side opens more than one
            connection per link only when there are several workers to spread over), then
            settings, each `id u16 | value u32`: SETTING_VERSION = major << 16 | minor.
            flags: TCP_STREAMS, the accepting side takes tcp streams (older proxies send
            no flags and ignore them, so a caller falls back to a TLS connection per
            tcp-link connection, ALPN glassmesh-tcp/1, toward them).
    GOAWAY  stream 0, sent by the accepting side when it stops (SIGTERM): payload u32, the
            highest stream id it has opened for the peer, the last it will serve. Streams
            up to it run to their end; a later one is reset with reason "goaway" and was not
            seen by any app, so the sender may send it anywhere again. The connecting side
            opens no new stream on this connection from then on (it connects anew: to
            another endpoint, or to the proxy that replaced this one on the same port) and
            closes it once its last stream is done.

Versions, for a fleet that runs two releases at once. The major version is in
the ALPN token (glassmesh-mux/1): a proxy offers the majors it speaks and TLS
picks one both speak, or http/1.1, so two proxies never hold a mux connection
that one of them cannot read. Within a major, a release adds, never changes,
and a reader ignores what it does not know: a frame type (skipped whole, its
length says how far), a setting id, a flag, bytes after the last whole
setting. So a peer one release newer can send what it likes; it uses a new
frame only once the peer's SETTINGS show a minor version that knows it. A
peer whose SETTINGS name another major (it broke the rule above) is refused:
a RESET on stream 0 with the reason, logged on both sides, then the
connection is closed; requests over it fail with that reason.

Streams are opened only by the side that made the TLS connection (odd ids,
growing). Every stream starts with a send window of INITIAL_WINDOW bytes.
This module is the codec only; no I/O.
"""

from __future__ import annotations

import struct
from typing import Final

ALPN_MUX = "glassmesh-mux/1"

DATA: Final = 0
WINDOW: Final = 1
RESET: Final = 2
SETTINGS: Final = 3
GOAWAY: Final = 4

FLAG_OPEN: Final = 1
FLAG_FIN: Final = 2
FLAG_TCP: Final = 4
SETTINGS_TCP_STREAMS: Final = 1  # SETTINGS flag
SETTING_VERSION: Final = 1  # SETTINGS id: major << 16 | minor
MAJOR: Final = 1  # must match the ALPN token's
# 1: SETTINGS carry settings and come from both sides; unknown frames and settings are skipped.
# 2: GOAWAY (sent only to a peer whose SETTINGS say 2 or later).
# 3: binary heads on streams (protocols/mux_head.py; sent only to a peer whose SETTINGS say 3 or later).
MINOR: Final = 3
MINOR_GOAWAY: Final = 2
_SETTING = struct.Struct("!HI")

HEADER = struct.Struct("!IBBI")
HEADER_SIZE: Final = 10  # HEADER.size
_U32 = struct.Struct("!I")
# Bound once: HEADER.pack is otherwise a method lookup by name on every frame.
_pack: Final = HEADER.pack
MAX_PAYLOAD: Final = 256 * 1024
INITIAL_WINDOW: Final = 1024 * 1024
MAX_STREAMS: Final = 4096


class MuxError(Exception):
    """The peer broke the protocol; the whole connection must go."""


def data(stream: int, payload: bytes, flags: int = 0) -> list[bytes]:
    """DATA frames for payload (split at MAX_PAYLOAD); flags go on the first (OPEN) and last (FIN)."""
    n = len(payload)
    if n <= MAX_PAYLOAD:
        return [_pack(n, DATA, flags, stream), payload]
    out: list[bytes] = []
    mv = memoryview(payload)
    last = (n - 1) // MAX_PAYLOAD * MAX_PAYLOAD
    for i in range(0, n, MAX_PAYLOAD):
        part = mv[i:i + MAX_PAYLOAD]
        f = flags
        if i:
            f &= ~FLAG_OPEN
        if i != last:
            f &= ~FLAG_FIN
        out += (_pack(len(part), DATA, f, stream), bytes(part))
    return out


def window(stream: int, increment: int) -> bytes:
    return _pack(4, WINDOW, 0, stream) + _U32.pack(increment)


def settings(workers: int, flags: int = 0, extra: dict[int, int] | None = None) -> bytes:
    """A SETTINGS frame: workers, this build's version, and `extra` settings (a test's, or a newer release's)."""
    pairs = {SETTING_VERSION: MAJOR << 16 | MINOR, **(extra or {})}
    payload = _U32.pack(workers) + b"".join(_SETTING.pack(k, v) for k, v in pairs.items())
    return HEADER.pack(len(payload), SETTINGS, flags, 0) + payload


def settings_workers(payload: bytes) -> int:
    return parse_settings(payload)[0]


def parse_settings(payload: bytes) -> tuple[int, dict[int, int]]:
    """(workers, settings by id) of a SETTINGS payload; ids this build does not know are kept, and ignored.

    A peer from before versions (minor 0) sends the workers only: version (1, 0).
    """
    if len(payload) < 4:
        raise MuxError("SETTINGS frame payload must be at least 4 bytes")
    (n,) = _U32.unpack_from(payload)
    found = {SETTING_VERSION: MAJOR << 16}
    for pos in range(4, len(payload) - _SETTING.size + 1, _SETTING.size):
        k, v = _SETTING.unpack_from(payload, pos)
        found[k] = v
    return max(1, min(n, 1024)), found


def version_refusal(settings: dict[int, int]) -> str:
    """Why a peer with these settings cannot share a mux connection with this build, or ""."""
    v = settings.get(SETTING_VERSION, MAJOR << 16)
    if v >> 16 == MAJOR:
        return ""
    return (f"peer speaks glassmesh-mux {v >> 16}.{v & 0xFFFF}, this proxy {MAJOR}.{MINOR}: "
            f"incompatible major version (set peer_protocol: http1 to carry HTTP/1.1 over TLS between them)")


def goaway(last_stream: int) -> bytes:
    return HEADER.pack(4, GOAWAY, 0, 0) + _U32.pack(last_stream)


def goaway_last(payload: bytes) -> int:
    if len(payload) != 4:
        raise MuxError("GOAWAY frame payload must be 4 bytes")
    (n,) = _U32.unpack(payload)
    return int(n)


REFUSED_GOAWAY: Final = "goaway"  # the RESET reason of a stream opened after the peer's GOAWAY: never served


def reset(stream: int, reason: str = "") -> bytes:
    r = reason.encode()[:200]
    return HEADER.pack(len(r), RESET, 0, stream) + r


class Decoder:
    """Bytes in, (type, flags, stream, payload) out; frames may arrive split anywhere.

    Frames of a type this build does not know come out too: the connection skips them (see Versions).
    """

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, int, int, bytes]]:
        buf = self.buf + data if self.buf else data
        out: list[tuple[int, int, int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_SIZE:
            # The header read byte by byte: compiled, that is a few instructions each,
            # where struct.unpack_from was a call and a tuple (about 500).
            length = (buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
            ftype = buf[pos + 4]
            flags = buf[pos + 5]
            stream = (buf[pos + 6] << 24) | (buf[pos + 7] << 16) | (buf[pos + 8] << 8) | buf[pos + 9]
            if length > MAX_PAYLOAD:
                raise MuxError(f"frame of {length} bytes is over the {MAX_PAYLOAD} limit")
            stop = pos + HEADER_SIZE + length
            if stop > end:
                break
            out.append((ftype, flags, stream, buf[pos + HEADER_SIZE:stop]))
            pos = stop
        self.buf = buf[pos:] if pos < end else b""
        return out


def window_increment(payload: bytes) -> int:
    if len(payload) != 4:
        raise MuxError("WINDOW frame payload must be 4 bytes")
    (n,) = _U32.unpack(payload)
    if n == 0 or n > 1 << 30:
        raise MuxError(f"bad WINDOW increment {n}")
    return n
