"""What one proxy process holds while it runs: the table in force, pools, counters, open connections.

Timeouts live here too: one sweeper a second looks at every open client
connection and pool instead of a timer per request, which would cost more
than the rest of the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from glassmesh.api.trace import host_tag
from glassmesh.model.snapshot import Snapshot
from glassmesh.protocols.http1 import set_origin
from glassmesh.proxy.budget import Budget
from glassmesh.proxy.pool import Pool
from glassmesh.proxy.routing import Live, PoolKey, Table, compile_table
from glassmesh.proxy.stats import LinkStats, Stats

# How many worker processes share this proxy's ports (set by the supervisor before it forks).
# An inbound tells its peers, so that they spread a link over several connections only when
# that feeds several workers.
PROCESS_WORKERS = 1

_encode = msgspec.json.Encoder().encode
ACCESS_FLUSH_S = 0.1  # a line reaches the file at most this long after its response
ACCESS_FLUSH_BYTES = 64 * 1024


class AccessLog:
    """JSON lines written in batches: one write() per ACCESS_FLUSH_S or 64 KiB, not one per request.

    A write per line cost about half of a request's CPU again (bench features
    section: 1.5-1.8x CPU per request with --access-log). Each batch is whole
    lines in one O_APPEND write, so the workers of one proxy can share the
    file without cutting each other's lines.
    """

    def __init__(self, path: str) -> None:
        # Who called what, with request ids: the owner's only (an existing file is narrowed).
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if os.fstat(self.fd).st_mode & 0o077:
            os.fchmod(self.fd, 0o600)
        self.buf: list[bytes] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, line: bytes) -> None:
        self.buf.append(line)
        self.size += len(line)
        if self.size >= ACCESS_FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(ACCESS_FLUSH_S, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.buf:
            return
        data = memoryview(b"".join(self.buf))
        self.buf, self.size = [], 0
        while data:
            data = data[os.write(self.fd, data):]


class Runtime:
    def __init__(self, snapshot: Snapshot, keylog: str | None = None, access_log: AccessLog | None = None,
                 ring: Any = None) -> None:
        self.stats = Stats()
        self.pools: dict[PoolKey, Pool] = {}
        self.conns: set[Any] = set()
        self.muxes: set[Any] = set()  # multiplexed connections from peers (inbound): closed when idle
        self.tasks: set[asyncio.Task] = set()
        self.keylog = keylog
        self._access = access_log
        self.logging = access_log is not None  # checked on the request path before calling access_log
        # Called with (exchange, status, mesh error reason or "") as each exchange finishes, after the
        # link stats, the endpoint and the access log (http.ServerConn.exchange_done): tap, tracing.
        self.observers: list[Callable[[Any, int, str], None]] = []
        # [byte limit] while a tap wants each try's bytes (its --body, a capture), else empty (tap.py).
        # Both lists are shared with every connection: changed in place, never replaced.
        self.recording: list[int] = []
        self.taps: dict[str, Any] = {}  # tap id -> the tap.Tap that watches this process's exchanges
        # The recent requests (ring.Ring, for `glassmesh trace`), with its spans.Exporter when OTLP export is on.
        # Made by the worker: the ring reads exchanges natively, so it imports http, which imports this module.
        self.ring = ring
        self.spans = ring is not None and ring.spans is not None  # read per connection: each hop makes a span
        # The ring is told natively by each connection (http.ServerConn.ring), not through observers.
        self.ready = False
        self.workers = PROCESS_WORKERS
        self.local_budget = Budget(snapshot.limits.max_client_connections)  # local apps, together
        self.peer_streams: dict[str, Budget] = {}  # by caller service: its HTTP connections and mux streams
        self.peer_conns: dict[str, Budget] = {}  # by caller service: its multiplexed TLS connections
        self.apply(snapshot)
        set_origin(host_tag(self.host).encode())  # ids minted here say so (api/trace.py)
        self.stats.endpoint_rows = self.endpoint_rows

    def apply(self, snap: Snapshot) -> None:
        """Swap in a new snapshot whole; raises (and changes nothing) if it cannot be used."""
        live: Live | None = getattr(self, "live", None)
        table: Table = compile_table(snap, self.keylog, live.table if live is not None else None, time.monotonic())
        self.snapshot = snap
        self.host = snap.host
        self.host_b = snap.host.encode()
        self.limits = snap.limits
        self.timeouts = snap.timeouts
        # A new snapshot's limits hold for what is open already.
        self.local_budget.limit = snap.limits.max_client_connections
        for b in self.peer_streams.values():
            b.limit = snap.limits.max_peer_streams
        for b in self.peer_conns.values():
            b.limit = snap.limits.max_peer_connections
        self.stats.snapshot_version = snap.version
        self.stats.host = snap.host
        if live is None:
            self.live = Live(table)
        else:
            live.table = table
            live.generation += 1
        # Keep warm connections to endpoints that are still there; new ones use the new certificates.
        reachable = {(ep[0], ep[1]) for r in table.remotes.values() for ep in r.endpoints.items}
        reachable |= {(k.host, k.port) for loc in table.locals.values() for k in loc.instances.items}
        for key in list(self.pools):
            pool = self.pools[key]
            if (key.host, key.port) not in reachable or (key.source is not None and key.source not in table.client_ctx):
                del self.pools[key]
                pool.close()
            elif key.source is not None:
                pool.ssl_ctx = table.client_ctx[key.source]
                pool.set_mux(table.mux)
            pool.connect_timeout = snap.timeouts.connect_ms / 1000

    @property
    def table(self) -> Table:
        """The table in force (held by `live`, which the compiled sides read)."""
        return self.live.table

    def endpoint_rows(self) -> list[dict[str, Any]]:
        """What the outbound side knows of each endpoint it sends HTTP to (metrics, /ready): load, latency, ejection."""
        now = time.monotonic()
        rows = []
        for name, remote in sorted(self.live.table.remotes.items()):
            if remote.protocol != "http":
                continue
            seen: set[tuple[str, int]] = set()
            for ep in remote.chain.endpoints:
                if ep.key in seen:
                    continue  # two instances on one host: one endpoint, listed twice (one series, not two)
                seen.add(ep.key)
                rows.append({
                    "service": name, "host": ep.host_name, "address": f"{ep.host}:{ep.port}",
                    "ejected": now < ep.ejected_until,
                    "ejected_for_s": round(max(0.0, ep.ejected_until - now), 3),
                    "ejections": ep.ejections, "ejections_total": ep.ejections_total,
                    "requests": ep.requests, "failures": ep.failures,
                    "outstanding": ep.outstanding, "latency_ewma_s": round(ep.ewma_s, 6),
                    "latency_buckets": list(ep.lat_buckets), "latency_sum_s": ep.lat_sum,
                })
        return rows

    # --- budgets ---------------------------------------------------------------
    def peer_budget(self, source: str) -> Budget:
        """The HTTP connections and mux streams `source` (a peer service) holds at this inbound."""
        b = self.peer_streams.get(source)
        if b is None:
            b = self.peer_streams[source] = Budget(self.limits.max_peer_streams)
        return b

    def peer_connections(self, source: str) -> Budget:
        """The multiplexed TLS connections `source` holds at this inbound."""
        b = self.peer_conns.get(source)
        if b is None:
            b = self.peer_conns[source] = Budget(self.limits.max_peer_connections)
        return b

    # --- pools ---------------------------------------------------------------
    def pool(self, key: PoolKey, link: LinkStats | None) -> Pool:
        p = self.pools.get(key)
        if p is None:
            t = self.table
            if key.source is not None:
                ctx = t.client_ctx[key.source]
                expected = t.expected_peer(key.sni)
            else:
                ctx = expected = None
            p = self.pools[key] = Pool(key, ctx, expected, link, self.timeouts.connect_ms / 1000,
                                       mux=t.mux and key.source is not None)
        return p

    # --- tasks -----------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def sweeper(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        to = self.timeouts
        idle, head, resp = to.idle_ms / 1000, to.head_ms / 1000, to.response_ms / 1000
        for c in list(self.conns):
            if c.transport is None or c.transport.is_closing():
                continue
            q = c.queue
            if c.head_started and now - c.head_started > head:
                c.request_timeout()
            elif c.write_blocked and now - c.write_blocked > idle:
                # The client stopped reading what it asked for: its connection (and the upstream
                # it holds paused) would stay forever. Reset, so the kernel drops what it still
                # holds for it too, instead of trickling it out to a reader that may never come.
                reset(c.transport)
            elif q:
                ex = q[0]
                up = ex.upstream
                if up is not None and not ex.resp_started and ex.sent_at and now - ex.sent_at > resp:
                    c.response_timeout(ex)
            elif now - c.last_active > idle:
                c.transport.close()
        for m in list(self.muxes):
            if m.streams or m.active:
                m.active, m.idle_since = False, now
            elif now - m.idle_since > idle:
                # A peer connection with nothing open and nothing said: peers reconnect at will.
                m.transport.close()
        pool_idle = to.pool_idle_ms / 1000
        for p in self.pools.values():
            if p.idle:
                p.sweep(now, pool_idle)

    # --- logs -------------------------------------------------------------------
    def access_log(self, ex: Any, status: int, reason: str, ep: Any = None) -> None:
        """One JSON line for a finished exchange; ep: the endpoint its last try went to (outbound)."""
        f = self._access
        if f is None:
            return
        r = ex.routed
        side = ex.conn.side.name
        head = ex.head
        rid = (ex.request_id or (head.rid if head is not None else None) or b"").decode("latin-1")
        # The traceparent sent on (the one this proxy made when the request came without one), else the one
        # that came: either way the same trace id.
        tp = ex.traceparent or (head.tp if head is not None else None)
        rec = {
            "ts": round(time.time(), 3),
            "host": self.host,
            "side": side,
            "source": r.link.source if r else getattr(ex.conn.side, "source", None),
            "destination": ex.service,
            "method": ex.method.decode("latin-1"),
            "path": ex.url.decode("latin-1"),
            "status": status,
            "duration_ms": round((time.monotonic() - ex.t0) * 1000, 3),
            "request_id": rid,
            # W3C traceparent's trace id (the one the proxy made when the request had none), else the
            # request id: what a log search joins the hops of one request on.
            "trace_id": tp[3:35].decode("latin-1") if tp else rid,
            "attempts": ex.attempts,
            "bytes_received": ex.req_bytes,
            "bytes_sent": ex.resp_bytes,
        }
        if r is not None:
            key = r.pool.key
            rec["endpoint"] = f"{key.host}:{key.port}"
            if ep is not None and ep.host_name:
                rec["endpoint_host"] = ep.host_name
        route = ex.route
        if route is not None:
            rec["route"] = route.name.decode()
            if ex.subset:
                rec["subset"] = ex.subset.decode()
        if reason:
            rec["mesh_error"] = reason
            rec["error_hop"] = f"{self.host}/{side}"
        elif ex.passed_error is not None:
            rec["mesh_error"], rec["error_hop"] = ex.passed_error
        f.add(_encode(rec) + b"\n")

    async def close(self) -> None:
        if self._access is not None:
            self._access.flush()
        if self.spans:
            await self.ring.spans.close()  # what is queued goes to the collector (bounded: spans.POST_TIMEOUT_S)
        for t in list(self.tasks):
            t.cancel()
        for p in self.pools.values():
            p.close()
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.close()


def reset(transport: Any) -> None:
    """Close with a TCP reset (SO_LINGER 0): nothing queued for the peer is kept or sent."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
