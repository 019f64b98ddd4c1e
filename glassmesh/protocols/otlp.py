"""OTLP trace export as bytes: an ExportTraceServiceRequest in protobuf, with no I/O and no dependency.

The proxies' spans go to any OpenTelemetry collector over OTLP/HTTP
(`POST /v1/traces`, `Content-Type: application/x-protobuf`, the default
encoding every OTLP receiver accepts). The few messages a span needs are
written here by hand from opentelemetry-proto's trace.proto and common.proto
(field numbers below), rather than pulling in protobuf and the SDK for a
proxy that only ever writes them; the e2e test decodes what a proxy sent
with opentelemetry-proto itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# SpanKind and Status.StatusCode (trace.proto)
KIND_SERVER = 2
KIND_CLIENT = 3
STATUS_UNSET = 0
STATUS_ERROR = 2

Attr = tuple[str, str | int | bool]


@dataclass
class Span:
    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes  # 8 bytes, or b"" for a root span
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: list[Attr] = field(default_factory=list)
    trace_state: str = ""
    status_code: int = STATUS_UNSET
    status_message: str = ""
    flags: int = 1  # the W3C trace flags (sampled)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _len(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


def _str(num: int, s: str) -> bytes:
    return _len(num, s.encode()) if s else b""


def _any_value(v: str | int | bool) -> bytes:
    # AnyValue: string_value = 1, bool_value = 2, int_value = 3 (int64, two's complement varint)
    if isinstance(v, bool):
        return _key(2, 0) + _varint(int(v))
    if isinstance(v, int):
        return _key(3, 0) + _varint(v & 0xFFFFFFFFFFFFFFFF)
    return _len(1, v.encode())


def _attributes(num: int, attrs: list[Attr]) -> bytes:
    # KeyValue: key = 1, value = 2
    return b"".join(_len(num, _str(1, k) + _len(2, _any_value(v))) for k, v in attrs)


def _span(s: Span) -> bytes:
    out = [
        _len(1, s.trace_id),
        _len(2, s.span_id),
        _str(3, s.trace_state),
        _len(4, s.parent_span_id) if s.parent_span_id else b"",
        _str(5, s.name),
        _key(6, 0) + _varint(s.kind),
        _key(7, 1) + struct.pack("<Q", s.start_ns),
        _key(8, 1) + struct.pack("<Q", s.end_ns),
        _attributes(9, s.attributes),
    ]
    if s.status_code:
        out.append(_len(15, _str(2, s.status_message) + _key(3, 0) + _varint(s.status_code)))
    out.append(_key(16, 5) + struct.pack("<I", s.flags & 0xFF))
    return b"".join(out)


def export_request(resource: list[Attr], scope: str, version: str, spans: list[Span]) -> bytes:
    """ExportTraceServiceRequest{resource_spans: [ResourceSpans{resource, scope_spans: [{scope, spans}]}]}."""
    scope_msg = _str(1, scope) + _str(2, version)
    scope_spans = _len(1, scope_msg) + b"".join(_len(2, _span(s)) for s in spans)
    resource_spans = _len(1, _attributes(1, resource)) + _len(2, scope_spans)
    return _len(1, resource_spans)
