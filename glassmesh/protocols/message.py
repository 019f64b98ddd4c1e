"""The message model the proxy works in, whatever the HTTP version on the wire: no I/O, no framing.

A message is a head, then body events, then its end:

    head        Request (method, target, fields) or Response (status, fields)
    Data        a piece of the body, in order
    Trailers    fields known only once the body is sent (a digest, gRPC's grpc-status)
    End         the message is complete

How each version frames them is the codec's business, not this model's:

    event       HTTP/1.1 (protocols/http1.py)               HTTP/2 (a later codec)
    head        start line and header block                  HEADERS
    Data        Content-Length bytes, or one chunk each      DATA
    Trailers    the trailer section after the last chunk     HEADERS with END_STREAM
                (chunked only: a Content-Length or
                close-delimited message has nowhere to put
                them, and they are dropped)
    End         the body's length reached, the last chunk    END_STREAM

Fields are flat lists (name, value, name, value, ...), as httptools gives
them and as the codec writes them: a tuple per field, made and freed per
message, cost about 200 instructions each on the request path.

The event classes are what a codec's reader reports and its writer takes
(tests record them; the request path passes the same values as arguments,
one call per event, without making the objects).
"""

from __future__ import annotations

from typing import Final

# Fields that describe one connection, not the message (RFC 9110 7.6.1), and proxy-only ones:
# never passed on by a proxy, in any version (HTTP/2 forbids them outright).
CONNECTION_FIELDS: Final = frozenset((
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"transfer-encoding",
    b"upgrade",
))
# Fields that must not travel as trailers (RFC 9110 6.5.1): framing, routing and
# connection control are read from the head alone, so a trailer that repeats one
# would mean something else to each hop that reads it. The mesh's own headers are
# set by mesh hops only, never taken from a peer's trailer section.
NOT_IN_TRAILERS: Final = CONNECTION_FIELDS | {
    b"content-length", b"trailer", b"host", b"expect", b"x-request-id", b"traceparent"}
_MESH_PREFIX: Final = b"glassmesh-"


def trailer_fields(fields: list[bytes]) -> list[bytes]:
    """The fields of a received trailer section that may cross to the next hop, in order.

    Off the common path: called only for a message that has trailers.
    """
    out: list[bytes] = []
    for i in range(0, len(fields) - 1, 2):
        name = fields[i]
        low = name.lower()
        if low in NOT_IN_TRAILERS or low.startswith(_MESH_PREFIX) or 95 in name:  # 95: "_", as in heads
            continue
        out.append(name)
        out.append(fields[i + 1])
    return out


class Request:
    """A request head: method, target (origin form, or absolute on an outbound proxy) and fields."""

    __slots__ = ("method", "target", "fields")

    def __init__(self, method: bytes, target: bytes, fields: list[bytes]) -> None:
        self.method = method
        self.target = target
        self.fields = fields

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.target!r}, {self.fields!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Request) and (self.method, self.target, self.fields) == (
            other.method, other.target, other.fields)


class Response:
    """A response head: status (1xx ones included, as interim heads) and fields."""

    __slots__ = ("status", "fields")

    def __init__(self, status: int, fields: list[bytes]) -> None:
        self.status = status
        self.fields = fields

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.fields!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Response) and (self.status, self.fields) == (other.status, other.fields)


class Data:
    """A piece of a body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({self.data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Data) and self.data == other.data


class Trailers:
    """A body's trailer section."""

    __slots__ = ("fields",)

    def __init__(self, fields: list[bytes]) -> None:
        self.fields = fields

    def __repr__(self) -> str:
        return f"Trailers({self.fields!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Trailers) and self.fields == other.fields


class End:
    """The message is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "End()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, End)


Event = Request | Response | Data | Trailers | End
