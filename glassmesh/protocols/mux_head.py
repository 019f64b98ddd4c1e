"""Binary heads: a message head on a glassmesh-mux stream as NUL-separated parts, not HTTP/1 text (mux minor 3).

Why: every request crosses the mux hop as HTTP/1 written by one proxy and
read again by llhttp in the next, request and response alike. Written as
its parts joined once, and read back with one split, a head costs neither
the per-field text nor the parser's callback per field (llhttp, then
httptools, then ours): see README "Benchmarks" for what it saves.

Form (the stream's bytes, where an HTTP/1 message would begin):

    request:   0x00 (name 0x00 value 0x00)* method 0x00 target 0x00 0x0A
    response:  0x00 (name 0x00 value 0x00)* status 0x00 0x0A

The fields come first: a reader splits the head once and pops the method
and target (or the status) off the end, and the list left is the flat
field list the head classes take as it is.

No HTTP/1 message begins with 0x00, so a reader tells the two apart by the
first byte. No part may hold CR, LF or NUL (HTTP/1 forbids all three in a
field; the sender's own reader, llhttp, refused them), so the first LF ends
the head. What follows a binary head is its body exactly as it would follow
an HTTP/1 head with the same fields: only heads are binary, and only of
messages framed by a Content-Length or with no body.

When a sender uses one (proxy/http.py; anything else goes as HTTP/1 text on
the same stream):
  - a request: the stream's peer said minor 3 or later in its SETTINGS; no
    body, or a Content-Length one; no upgrade; no tap recording the bytes;
  - a response: the same of the peer; a final status (200-599), no body or a
    Content-Length one, and the stream stays open for the next request.
Always HTTP/1.1 and kept alive: a binary head has no version and no Connection field.

What a reader refuses (the message is an error: a request 400, a response 502),
so that what it writes on as HTTP/1 reads one way only: CR anywhere in the head,
a part count that is not a whole head, a method or a field name that is not an
RFC 9110 token, a target with a space or a control byte, a status that is not
200-599, a Transfer-Encoding or a Connection field. A reader accepts binary
heads only on a mux stream (never from an app) and only where a message begins.
This module is the codec only: no I/O.
"""

from __future__ import annotations

import re
from typing import Final

from glassmesh.protocols.http1 import BadMessage, status_line

MINOR_BINARY_HEAD: Final = 3  # the mux minor version that reads binary heads (protocols/mux.py)

_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TARGET: Final = re.compile(rb"[\x21-\x7e\x80-\xff]+")
# Names a reader remembers as checked, and the longest it remembers: a stream's set holds at most
# 64 x 64 bytes (a peer with 4,096 streams open, 16 MB at most); past that a name is checked each time.
_KNOWN_MAX: Final = 64
_KNOWN_NAME_MAX: Final = 64
_METHODS: Final = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"))
_START: Final = b""  # the first part: the join puts the leading 0x00 before the method (or status)
_END: Final = b"\n"  # the last part: the join puts a 0x00 before the LF


def encode_request(method: bytes, target: bytes, fields: list[bytes]) -> bytes:
    """A request head in binary form; fields flat (name, value, ...), already valid HTTP/1 fields."""
    parts = [_START]
    parts += fields
    parts.append(method)
    parts.append(target)
    parts.append(_END)
    return b"\0".join(parts)


def encode_response(status: int, fields: list[bytes], more: list[bytes]) -> bytes:
    """A response head in binary form: fields, then more fields (flat)."""
    parts = [_START]
    parts += fields
    parts += more
    parts.append(_STATUS[status] if 200 <= status < 600 else b"%d" % status)
    parts.append(_END)
    return b"\0".join(parts)


_STATUS: Final = [b"%d" % i for i in range(600)]


class Known:
    """The field names (and methods) one reader has found to be tokens: checked once each, not per message.

    A stream's heads mostly repeat the names of the one before in the same places (the same
    app answers the same way), so a name is first compared with the previous head's at its
    index (a memcmp); only one that differs is looked up in the set (a hash of a new object,
    about 100 instructions a name).
    """

    def __init__(self) -> None:
        self.names: set[bytes] = set()
        self.prev: list[bytes] = []  # the previous head's parts (its names at even indexes)

    def check(self, parts: list[bytes], stop: int) -> bytes | None:
        """The first of the names parts[0:stop:2] that is not a token, or None; remembers parts."""
        prev = self.prev
        same = len(prev)
        for i in range(0, stop, 2):
            name = parts[i]
            if i < same and prev[i] == name:
                continue
            if not self.token(name):
                return name
        self.prev = parts
        return None

    def token(self, name: bytes) -> bool:
        names = self.names
        if name in names:
            return True
        if _TOKEN.fullmatch(name) is None:
            return False
        if len(names) < _KNOWN_MAX and len(name) <= _KNOWN_NAME_MAX:
            names.add(name)
        return True


def head_end(buf: bytes) -> int:
    """Where the binary head at the start of buf ends (the index of its LF), or -1 while incomplete."""
    return buf.find(b"\n")


def split_head(buf: bytes, end: int, known: Known, status: int) -> list[bytes]:
    """The parts of the binary head buf[:end + 1] (its LF at end), checked: [fields..., method, target]
    of a request, [fields..., status] of a response (the fields flat).

    `status` is the HTTP status a refusal carries (400 reading requests, 502 responses).
    """
    reason = "bad_request" if status == 400 else "upstream_protocol_error"
    if end < 3 or buf[end - 1] != 0:
        raise BadMessage("binary head not ended by NUL LF", reason, status)
    head = buf[1:end - 1]
    if 13 in head:
        raise BadMessage("binary head holds a CR", reason, status)
    parts = head.split(b"\0")
    n = len(parts)
    last = 2 if status == 400 else 1  # request: method and target; response: status
    if n < last or (n - last) % 2:
        raise BadMessage(f"binary head of {n} parts is not a whole head", reason, status)
    bad = known.check(parts, n - last)
    if bad is not None:
        raise BadMessage(f"binary head field name {bad[:40]!r} is not a token", reason, status)
    return parts


def check_request_line(method: bytes, target: bytes, known: Known) -> None:
    if method not in _METHODS and not known.token(method):
        raise BadMessage(f"binary head method {method[:20]!r} is not a token")
    if target != b"/" and _TARGET.fullmatch(target) is None:
        raise BadMessage(f"binary head target {target[:60]!r} holds a space or a control byte")


def parse_status(part: bytes) -> int:
    """A response's status part: 3 digits, 200-599 (an interim or a switch is never binary)."""
    if len(part) != 3:
        return 0
    n = 0
    for i in range(3):
        c = part[i]
        if c < 48 or c > 57:
            return 0
        n = n * 10 + (c - 48)
    return n if 200 <= n < 600 else 0


def response_as_http1(buf: bytes, end: int) -> bytes:
    """The binary response head buf[:end + 1] as the HTTP/1 head it stands for, then the rest of buf.

    For a tap's recording (a capture reads HTTP/1), not for the request path; not checked.
    """
    parts = buf[1:end - 1].split(b"\0")
    out = [status_line(parse_status(parts.pop()) or 502)]
    for i in range(0, len(parts) - 1, 2):
        out.append(parts[i] + b": " + parts[i + 1])
    out.append(b"\r\n")
    return b"\r\n".join(out) + buf[end + 1:]
