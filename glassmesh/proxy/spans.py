"""The proxy's own spans, sent to an OpenTelemetry collector over OTLP/HTTP (`--otlp-endpoint URL`).

With an endpoint configured, every hop makes a span of its own: a new span id,
the caller's as its parent (from the `traceparent` that came in), and the
traceparent sent on names this span, so the app's spans hang under the proxy's
(http.ServerConn._own_span; `tracestate` is kept as it came). Without one, the
proxy passes traceparent on untouched and makes no span at all.

Never in the request's way: the request path hands over the trace ring's record
it filled anyway (Ring.spans.add: a copy of it, appended to a list); this module turns records into
spans in batches, off the request path, and posts one batch at a time. The queue
is bounded (MAX_QUEUE spans): when the collector is slow or down, what does not
fit is dropped and counted (glassmesh_spans_dropped_total), never buffered
without bound and never waited for. A request whose trace is not sampled (W3C
trace flags) makes no span.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from urllib.parse import urlsplit

from glassmesh import __version__
from glassmesh.protocols import otlp
from glassmesh.proxy.log import log
from glassmesh.proxy.ring import Rec

MAX_QUEUE = 4096  # spans waiting for the collector at most, per process
BATCH = 512  # spans per POST at most
INTERVAL_S = 1.0  # a span waits at most about this long before it is sent
POST_TIMEOUT_S = 5.0
COMPLAIN_EVERY_S = 60.0  # one log line per this long while the collector fails


def check_url(url: str) -> str:
    """The OTLP/HTTP traces URL for `url`: `/v1/traces` added when it names no path; ValueError when unusable."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--otlp-endpoint must be an http:// or https:// URL, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        raise ValueError(f"--otlp-endpoint {url!r}: {e}") from None
    if parts.path in ("", "/"):
        url = url.rstrip("/") + "/v1/traces"
    return url


class Exporter:
    """Batches this process's spans and posts them; counts what it sent and what it dropped."""

    def __init__(self, url: str, host: str = "") -> None:
        self.url = check_url(url)
        p = urlsplit(self.url)
        self.tls = p.scheme == "https"
        self.addr = (p.hostname or "", p.port or (443 if self.tls else 80))
        self.target = p.path + (f"?{p.query}" if p.query else "")
        self.authority = p.netloc
        self.host = host
        self.queue: list[Rec] = []
        self.counts: dict[str, int] = {"exported": 0, "dropped_queue_full": 0, "dropped_collector": 0}
        self.timer: asyncio.TimerHandle | None = None
        self.sending: asyncio.Task[None] | None = None
        self.complained = 0.0
        self.closed = False

    # --- the request path's side: one append -----------------------------------
    def add(self, rec: Rec) -> None:
        tp = rec.tp_out or rec.tp_in
        if tp is not None and not int(tp[53:55], 16) & 1:
            return  # not sampled: the caller's tracer does not want this trace
        q = self.queue
        if len(q) >= MAX_QUEUE:
            self.counts["dropped_queue_full"] += 1
            return
        q.append(rec.copy())  # the ring overwrites its own record when it goes round
        if self.timer is None and not self.closed:
            self.timer = asyncio.get_running_loop().call_later(INTERVAL_S, self._flush)

    # --- off the request path -----------------------------------------------------
    def _flush(self) -> None:
        self.timer = None
        if self.sending is not None or not self.queue:
            if self.queue and not self.closed:
                self.timer = asyncio.get_running_loop().call_later(INTERVAL_S, self._flush)
            return
        batch, self.queue = self.queue[:BATCH], self.queue[BATCH:]
        self.sending = asyncio.get_running_loop().create_task(self._send(batch))
        if self.queue and not self.closed:
            self.timer = asyncio.get_running_loop().call_later(INTERVAL_S / 10, self._flush)

    async def _send(self, batch: list[Rec]) -> None:
        try:
            body = otlp.export_request(
                [("service.name", "glassmesh-proxy"), ("service.version", __version__), ("host.name", self.host)],
                "glassmesh.proxy", __version__, spans(batch, self.host))
            async with asyncio.timeout(POST_TIMEOUT_S):
                status = await self._post(body)
            if 200 <= status < 300:
                self.counts["exported"] += len(batch)
                return
            why = f"it answered {status}"
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as e:
            why = str(e) or type(e).__name__
        finally:
            self.sending = None
        self.counts["dropped_collector"] += len(batch)
        now = time.monotonic()
        if now - self.complained > COMPLAIN_EVERY_S:
            self.complained = now
            log(f"spans: the collector at {self.url} did not take {len(batch)} spans ({why}); dropping them "
                f"(glassmesh_spans_dropped_total) until it does")

    async def _post(self, body: bytes) -> int:
        ctx = ssl.create_default_context() if self.tls else None
        reader, writer = await asyncio.open_connection(*self.addr, ssl=ctx)
        try:
            writer.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/x-protobuf\r\n"
                         b"content-length: %d\r\nconnection: close\r\nuser-agent: glassmesh/%s\r\n\r\n" % (
                             self.target.encode(), self.authority.encode(), len(body), __version__.encode()) + body)
            await writer.drain()
            line = await reader.readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP response: {line[:60]!r}")
            return int(parts[1])
        finally:
            writer.close()

    async def close(self) -> None:
        """Send what is queued (a stop: best effort, bounded by POST_TIMEOUT_S)."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.sending is not None:
            await asyncio.wait([self.sending], timeout=POST_TIMEOUT_S)
        if self.queue:
            batch, self.queue = self.queue[:BATCH], []
            await self._send(batch)


def spans(batch: list[Rec], host: str) -> list[otlp.Span]:
    """Records as OTLP spans; wall-clock times from the monotonic ones the request path read."""
    wall_ns = time.time_ns() - time.monotonic_ns()
    out = []
    for r in batch:
        tp = r.tp_out or r.tp_in
        trace = bytes.fromhex(tp[3:35].decode()) if tp is not None else os.urandom(16)
        span = bytes.fromhex(r.span.decode()) if r.span is not None else os.urandom(8)
        parent = bytes.fromhex(r.tp_in[36:52].decode()) if r.tp_in is not None else b""
        dest = r.destination or ""
        attrs: list[otlp.Attr] = [
            ("http.request.method", r.method.decode("latin-1")),
            ("url.path", r.path.decode("latin-1")),
            ("http.response.status_code", r.status),
            ("glassmesh.host", host),
            ("glassmesh.side", r.side),
            ("glassmesh.source", r.source),
            ("glassmesh.destination", dest),
            ("glassmesh.request_id", r.rid.decode("latin-1") if r.rid is not None else ""),
        ]
        if r.attempts > 1:
            attrs.append(("glassmesh.attempts", r.attempts))
        if r.key is not None:
            attrs.append(("server.address", r.key.host))
            attrs.append(("server.port", r.key.port))
        failed = r.status >= 500 or bool(r.reason)
        if r.reason:
            attrs.append(("glassmesh.mesh_error", r.reason))
            attrs.append(("error.type", r.reason))
        elif failed:
            attrs.append(("error.type", str(r.status)))
        out.append(otlp.Span(
            trace_id=trace, span_id=span, parent_span_id=parent, name=f"{r.side} {dest}".strip(),
            kind=otlp.KIND_CLIENT if r.side == "outbound" else otlp.KIND_SERVER,
            start_ns=int(r.t0 * 1e9) + wall_ns, end_ns=int(r.end * 1e9) + wall_ns, attributes=attrs,
            trace_state=r.tracestate.decode("latin-1") if r.tracestate else "", status_code=otlp.STATUS_ERROR if failed else otlp.STATUS_UNSET,
            status_message=r.message if r.reason else "",
            flags=int(tp[53:55], 16) if tp is not None else 1))
    return out
