"""Health checks of this host's instances, done by the proxy that fronts them, and their registration.

The proxy is the one process that knows which app instances it delivers to
(its snapshot's local_services[].instances, compiled by the control plane
from mesh.yaml), and it sits next to them, so it checks them itself (a TCP
connect, or an HTTP GET of the service's health path expecting 2xx) and
reports "these are the instances I front and how they are" to the control
plane every interval with a TTL of three intervals: a host that stops
reporting (proxy dead, host gone) has its instances expire on their own.

A connection refused marks an instance unhealthy at once (nothing listens:
the app is gone); a timeout or other error needs two in a row, so a single
slow answer under load does not pull an instance out of rotation.

The control plane drops instances reported unhealthy from what it compiles
into local_services (when the service has a healthy one elsewhere on the
host), so an instance that left the snapshot while we last saw it unhealthy
is still checked (up to STICKY_S) and reported: otherwise it could never be
seen coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from glassmesh.api.wire import Reported
from glassmesh.model.snapshot import LocalService, Snapshot, split_address
from glassmesh.proxy.log import log

STICKY_S = 600.0  # how long an instance that left the snapshot while unhealthy is still checked
FALL_SOFT = 2  # timeouts and odd answers in a row before an instance counts as unhealthy
MAX_HEAD = 8192


@dataclass
class Check:
    """What one instance's checks have said so far."""

    service: str
    address: str
    healthy: bool = False
    detail: str = "not checked yet"
    soft_failures: int = 0
    checked_at: float = 0.0
    dropped_at: float | None = None  # when it left the snapshot (kept only while unhealthy)


@dataclass
class Spec:
    """How to check one service's instances (from its LocalService)."""

    http_path: str | None
    interval_s: float
    timeout_s: float


async def probe(address: str, http_path: str | None, timeout_s: float, host_header: str) -> tuple[bool, bool, str]:
    """One check. Returns (healthy, definitive, detail); definitive failures (refused) count at once."""
    host, port = split_address(address)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if http_path is None:
                    return True, True, "tcp connect ok"
                writer.write(f"GET {http_path} HTTP/1.1\r\nhost: {host_header}\r\nuser-agent: glassmesh-health\r\n"
                             f"connection: close\r\n\r\n".encode("latin-1"))
                line = await reader.readline()
                parts = line.split(None, 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                    return False, False, f"GET {http_path}: not an HTTP response ({line[:40]!r})"
                status = int(parts[1])
                if 200 <= status < 300:
                    return True, True, f"GET {http_path}: {status}"
                return False, True, f"GET {http_path}: status {status}"
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return False, False, f"no answer within {timeout_s * 1000:.0f} ms"
    except ConnectionRefusedError:
        return False, True, "connect refused"
    except OSError as e:
        return False, False, f"connect failed: {e.strerror or e}"


def specs(snap: Snapshot | None) -> dict[str, tuple[Spec, list[str]]]:
    """service -> (how to check it, its instances) for every local service with instances."""
    out: dict[str, tuple[Spec, list[str]]] = {}
    for ls in snap.local_services if snap is not None else ():
        if ls.instances:
            out[ls.name] = (_spec(ls), list(ls.instances))
    return out


def _spec(ls: LocalService) -> Spec:
    return Spec(ls.health_http if ls.protocol == "http" else None, ls.health_interval_ms / 1000,
                ls.health_timeout_ms / 1000)


@dataclass
class HealthReporter:
    """Checks every local instance each interval and hands the whole list to `report`.

    `current` gives the snapshot in force (it changes under us: instances come
    and go with each accepted snapshot); `report(instances, ttl_s)` sends them
    to the control plane and may fail: the next round simply reports again.
    """

    current: Callable[[], Snapshot | None]
    report: Callable[[list[Reported], float], Awaitable[None]]
    checks: dict[tuple[str, str], Check] = field(default_factory=dict)
    rounds: int = 0
    _reported: bool = False  # the last report listed instances: an empty one must follow when they go

    def interval_s(self) -> float:
        ss = specs(self.current())
        return min((s.interval_s for s, _ in ss.values()), default=2.0)

    async def check_once(self, now: float | None = None) -> list[Reported]:
        """Check every instance once (concurrently) and return what to report."""
        now = time.time() if now is None else now
        ss = specs(self.current())
        wanted = {(svc, a) for svc, (_, addrs) in ss.items() for a in addrs}
        for key in list(self.checks):
            c = self.checks[key]
            if key in wanted:
                c.dropped_at = None
            elif c.healthy or key[0] not in ss:
                del self.checks[key]  # removed on purpose (or its service left this host): stop checking
            else:
                c.dropped_at = c.dropped_at or now
                if now - c.dropped_at > STICKY_S:
                    del self.checks[key]
        for key in wanted:
            if key not in self.checks:
                self.checks[key] = Check(*key)
        keys = sorted(self.checks)
        results = await asyncio.gather(*(probe(a, ss[svc][0].http_path, ss[svc][0].timeout_s, svc)
                                         for svc, a in keys))
        for key, (ok, definitive, detail) in zip(keys, results, strict=True):
            self._record(self.checks[key], ok, definitive, detail, now)
        self.rounds += 1
        return [Reported(service=c.service, address=c.address, healthy=c.healthy, detail=c.detail)
                for c in (self.checks[k] for k in keys)]

    def _record(self, c: Check, ok: bool, definitive: bool, detail: str, now: float) -> None:
        was = c.healthy if c.checked_at else None
        if ok:
            c.healthy, c.soft_failures = True, 0
        elif definitive:
            c.healthy, c.soft_failures = False, 0
        else:
            c.soft_failures += 1
            if c.soft_failures >= FALL_SOFT or was is None:
                c.healthy = False
        c.detail, c.checked_at = detail, now
        if was is not None and was != c.healthy:
            log(f"health: {c.service} instance {c.address} is now {'healthy' if c.healthy else 'unhealthy'}"
                f" ({detail})")
        elif was is None and not c.healthy:
            log(f"health: {c.service} instance {c.address} is unhealthy ({detail})")

    async def run(self) -> None:
        """Check and report forever; an exception in one round is logged and the next round runs."""
        while True:
            interval = self.interval_s()
            started = time.monotonic()
            try:
                found = await self.check_once() if specs(self.current()) or self.checks else []
                if found or self._reported:
                    await self.report(found, 3 * interval)
                    self._reported = bool(found)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - health checks must never stop for good
                log(f"health: round failed: {type(e).__name__}: {e}", "warning")
            await asyncio.sleep(max(0.05, interval - (time.monotonic() - started)))
