"""Responses the mesh itself makes, and the words they use.

Every one names the hop that made it (host and side) and a reason code in
the `glassmesh-error` header, and explains itself in a JSON body, so that a
503 can be traced to the proxy that made it without reading any logs.
"""

from __future__ import annotations

import json

from glassmesh.protocols.http1 import ERROR_HEADER, REQUEST_ID, status_line

# reason code -> (status, what it means, for the body)
REASONS: dict[str, tuple[int, str]] = {
    "unknown_service": (404, "no service by this name is known to this proxy"),
    "no_endpoints": (503, "the service has no endpoints to send the request to"),
    "connect_refused": (502, "the next hop refused the connection"),
    "connect_timeout": (504, "the next hop did not accept the connection in time"),
    "tls_failure": (502, "the mutual TLS handshake with the next hop failed"),
    "response_timeout": (504, "the next hop did not answer in time"),
    "upstream_reset": (502, "the next hop closed the connection before answering"),
    "upstream_protocol_error": (502, "the next hop answered with invalid HTTP"),
    "bad_request": (400, "the request is malformed or ambiguous and was not forwarded"),
    "head_too_large": (431, "the request head is larger than this proxy accepts"),
    "forbidden": (403, "policy does not allow this caller to reach this service"),
    "misdirected": (421, "this proxy does not serve the requested service"),
    "method_not_allowed": (405, "this method cannot be proxied"),
    "not_implemented": (501, "the request uses a feature this proxy does not implement"),
    "request_timeout": (408, "the request head did not arrive in time"),
    "overloaded": (503, "the proxy is at its connection limit"),
    "max_requests": (503, "the destination is at its limit of concurrent requests (mesh.yaml limits)"),
    "max_pending": (503, "the destination is at its limit of requests waiting for a connection"),
    "max_connections": (503, "the destination is at its limit of connections"),
    "idle_timeout": (504, "the next hop sent nothing for longer than the route's idle timeout"),
    "fault_abort": (503, "fault injection on this route aborted the request"),
    "call_not_allowed": (403, "the calling service's `calls` list does not include this service"),
    "http2_not_supported": (505, "HTTP/2 (and so gRPC) is not carried yet; a tcp link carries it"),
    "internal_error": (500, "this proxy failed while handling the message: a defect in glassmesh, not the "
                            "peer's fault (its log has the traceback)"),
}


def error_response(
    reason: str,
    *,
    host: str,
    side: str,
    message: str = "",
    service: str | None = None,
    request_id: bytes | None = None,
    status: int | None = None,
    close: bool = False,
    trail: bytes | None = None,
    attempts: int = 1,
) -> bytes:
    """A complete HTTP/1.1 response (head and JSON body) for a mesh-made error."""
    default_status, meaning = REASONS.get(reason, (502, reason))
    status = status or default_status
    body_doc = {
        "error": reason,
        "status": status,
        "hop": {"host": host, "side": side, "proxy": "glassmesh"},
        "message": message or meaning,
        "meaning": meaning,
    }
    if service is not None:
        body_doc["service"] = service
    if request_id:
        body_doc["request_id"] = request_id.decode("latin-1")
    body = json.dumps(body_doc).encode() + b"\n"
    headers = [
        (ERROR_HEADER, f"{reason}; hop={host}/{side}".encode()),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if request_id:
        headers.append((REQUEST_ID, request_id))
    if trail:
        headers.append((b"glassmesh-trail", trail))
    if attempts > 1:
        headers.append((b"glassmesh-attempts", b"%d" % attempts))
    if close:
        headers.append((b"connection", b"close"))
    out = [status_line(status), b"\r\n"]
    for n, v in headers:
        out += (n, b": ", v, b"\r\n")
    out += (b"\r\n", body)
    return b"".join(out)
