"""The OTLP protobuf the proxies write, read back with opentelemetry-proto (the collector's own schema)."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from glassmesh.protocols import otlp


def test_export_request_decodes_with_the_official_schema():
    trace, span, parent = bytes(range(16)), bytes(range(8, 16)), bytes(range(1, 9))
    body = otlp.export_request(
        [("service.name", "glassmesh-proxy"), ("host.name", "a")], "glassmesh.proxy", "0.1.0",
        [otlp.Span(trace_id=trace, span_id=span, parent_span_id=parent, name="outbound api", kind=otlp.KIND_CLIENT,
                   start_ns=1_700_000_000_123_456_789, end_ns=1_700_000_000_223_456_789,
                   attributes=[("http.response.status_code", 503), ("url.path", "/x"), ("big", 2**40),
                               ("neg", -1), ("flag", True)],
                   trace_state="vendor=abc", status_code=otlp.STATUS_ERROR, status_message="connect refused"),
         otlp.Span(trace_id=trace, span_id=parent, parent_span_id=b"", name="root", kind=otlp.KIND_SERVER,
                   start_ns=1, end_ns=2)])
    req = ExportTraceServiceRequest.FromString(body)
    rs = req.resource_spans[0]
    assert {a.key: a.value.string_value for a in rs.resource.attributes} == {"service.name": "glassmesh-proxy",
                                                                             "host.name": "a"}
    ss = rs.scope_spans[0]
    assert (ss.scope.name, ss.scope.version) == ("glassmesh.proxy", "0.1.0")
    s, root = ss.spans
    assert (s.trace_id, s.span_id, s.parent_span_id) == (trace, span, parent)
    assert s.name == "outbound api" and s.kind == PbSpan.SPAN_KIND_CLIENT and s.trace_state == "vendor=abc"
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (1_700_000_000_123_456_789, 1_700_000_000_223_456_789)
    attrs = {a.key: a.value for a in s.attributes}
    assert attrs["http.response.status_code"].int_value == 503 and attrs["url.path"].string_value == "/x"
    assert attrs["big"].int_value == 2**40 and attrs["neg"].int_value == -1 and attrs["flag"].bool_value is True
    assert s.status.code == Status.STATUS_CODE_ERROR and s.status.message == "connect refused"
    assert s.flags == 1
    assert root.parent_span_id == b"" and root.kind == PbSpan.SPAN_KIND_SERVER
    assert root.status.code == Status.STATUS_CODE_UNSET
