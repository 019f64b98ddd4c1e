"""DNS discovery without a DNS server: the loop's rules (TTL, last good answer, store writes) and compile.

A scripted resolver stands in for DNS here so that each rule is checked
exactly and fast; tests/e2e/test_control_dns.py runs the same code against a
real dnsmasq.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from glassmesh.control import dns as gdns
from glassmesh.control import ops
from glassmesh.control.compile import compile_snapshots, healthy_instances
from glassmesh.control.config import parse_config
from glassmesh.control.discovery import EXTERNAL_HOST
from glassmesh.control.dns import Answer, DnsDiscovery, DnsLookupError, Query
from glassmesh.control.plane import Plane
from glassmesh.control.store import InstanceRecord
from glassmesh.control.store_sqlite import SqliteStore

MESH = """\
services:
  - {name: a}
  - {name: b, port: 8080, dns: {name: b.test}}
  - {name: c, dns: {name: _http._tcp.c.test, type: SRV}}
  - {name: d, port: 9000}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
  - {name: host2, address: 127.0.0.12:4143, services: [d]}
"""


class Scripted(gdns.Resolver):
    """Answers from a dict the test changes; a name mapped to an exception fails with it."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer | Exception] = {}
        self.asked: list[str] = []

    async def lookup(self, q: Query) -> Answer:
        self.asked.append(q.name)
        a = self.answers.get(q.name, DnsLookupError(f"{q.name}: no such name (NXDOMAIN)"))
        if isinstance(a, Exception):
            raise a
        return a


class CountingStore(SqliteStore):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.puts: list[str] = []

    async def put_instances(self, host: str, instances: list[InstanceRecord], ttl_s: float) -> None:
        self.puts.append(host)
        await super().put_instances(host, instances, ttl_s)


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millisecond TTL floor and retry, so each rule is seen in a few loop turns."""
    monkeypatch.setattr(gdns, "TTL_FLOOR_S", 0.01)
    monkeypatch.setattr(gdns, "RETRY_MAX_S", 0.05)


async def until(pred: Callable[[], Awaitable[bool]], limit: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def dns_addrs(store: SqliteStore, service: str) -> list[str]:
    return sorted(r.address for r in await store.instances() if r.host == EXTERNAL_HOST and r.service == service)


def endpoints(plane: Plane, service: str) -> list[tuple[str, str]]:
    svc = plane.snapshots["host1"].service(service)
    return [(e.host, e.address) for e in svc.endpoints] if svc else []


def test_server_specs_and_ttl_rules() -> None:
    assert gdns.parse_server("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert gdns.parse_server("10.0.0.2") == ("10.0.0.2", 53)
    assert gdns.parse_server("[::1]:5300") == ("::1", 5300)
    assert gdns.parse_server("::1") == ("::1", 53)
    for bad in ("ns1.example:53", "127.0.0.1:x", "127.0.0.1:70000", "[::1]x"):
        with pytest.raises(ValueError):
            gdns.parse_server(bad)
    floor, ceiling = 0.01, gdns.TTL_CEILING_S
    assert gdns.clamp_ttl(0) == floor and gdns.clamp_ttl(30) == 30 and gdns.clamp_ttl(86400) == ceiling
    assert [gdns.retry_delay(n) for n in (1, 2, 3, 10)] == [0.01, 0.02, 0.04, 0.05]


def test_compile_makes_dns_instances_direct_endpoints() -> None:
    cfg = parse_config(MESH)
    recs = [
        InstanceRecord("b", EXTERNAL_HOST, "10.0.0.1:8080", True, source="dns"),
        InstanceRecord("b", EXTERNAL_HOST, "10.0.0.2:8080", False, source="dns"),  # lease expired
        InstanceRecord("d", EXTERNAL_HOST, "10.0.0.3:9000", True, source="dns"),  # d has no `dns:`
        InstanceRecord("d", "host2", "127.0.0.12:9000", True),
    ]
    assert healthy_instances(cfg, recs)["b"] == [(EXTERNAL_HOST, "10.0.0.1:8080")]
    assert healthy_instances(cfg, recs)["d"] == [("host2", "127.0.0.12:9000")]
    snap = compile_snapshots(cfg, recs, trust_domain="glassmesh.local", versions={})["host1"]
    b, d = snap.service("b"), snap.service("d")
    assert b is not None and d is not None
    # The DNS instance's own address (nothing fronts it); the mesh one's proxy inbound port.
    assert [(e.host, e.address) for e in b.endpoints] == [(EXTERNAL_HOST, "10.0.0.1:8080")]
    assert [(e.host, e.address) for e in d.endpoints] == [("host2", "127.0.0.12:4143")]


def test_answers_reach_the_snapshot_and_follow_changes(tmp_path: Path) -> None:
    async def main() -> None:
        store = CountingStore(str(tmp_path / "s.sqlite"))
        res = Scripted()
        res.answers["b.test"] = Answer(("10.0.0.1:8080", "10.0.0.2:8080"), 0.02)
        res.answers["_http._tcp.c.test"] = Answer(("10.0.1.1:7001",), 0.02)
        plane = Plane(store, "glassmesh.local")
        plane.dns = DnsDiscovery(store, res)
        await ops.apply(store, MESH, "t@h")
        plane.start()
        try:
            b0 = [(EXTERNAL_HOST, "10.0.0.1:8080"), (EXTERNAL_HOST, "10.0.0.2:8080")]
            await until(lambda: _true(plane.snapshots.get("host1") is not None and endpoints(plane, "b") == b0))
            assert endpoints(plane, "c") == [(EXTERNAL_HOST, "10.0.1.1:7001")]
            # The same answer again and again (a TTL of 20 ms): no store write for it.
            writes = len(store.puts)
            asked = len(res.asked)
            await until(lambda: _true(len(res.asked) >= asked + 10))
            assert len(store.puts) == writes
            # The record changes: the snapshot follows after the TTL.
            res.answers["b.test"] = Answer(("10.0.0.1:8080", "10.0.0.3:8080"), 0.02)
            b1 = [(EXTERNAL_HOST, "10.0.0.1:8080"), (EXTERNAL_HOST, "10.0.0.3:8080")]
            await until(lambda: _true(endpoints(plane, "b") == b1))
            # DNS goes away: the last good answer stays, the failure is counted and shown.
            res.answers["b.test"] = DnsLookupError("b.test A: timed out after 3s")
            await until(lambda: _true(plane.dns.status()[0]["failures"] >= 3))
            st = plane.dns.status()[0]
            assert st["service"] == "b" and "timed out" in st["error"] and st["addresses"] == [a for _, a in b1]
            assert await dns_addrs(store, "b") == ["10.0.0.1:8080", "10.0.0.3:8080"]
            assert endpoints(plane, "b") == b1
            # `dns:` removed from the config: its records leave the store; that empties b, which the
            # guard holds like any other wipe-out, until it is released.
            await ops.apply(store, MESH.replace(", dns: {name: b.test}", ""), "t@h")
            await until(_no_dns_b(store))
            await until(lambda: _held(store, "b"))
            assert endpoints(plane, "b") == b1
            assert await dns_addrs(store, "c") == ["10.0.1.1:7001"]
            await ops.release(store, "b")
            await until(lambda: _true(endpoints(plane, "b") == []))
        finally:
            await plane.stop()
            await store.close()

    asyncio.run(main())


def test_restart_during_outage_keeps_the_stored_answer(tmp_path: Path) -> None:
    """A replica that starts while DNS is down serves the answer the store kept, and does not wipe it."""

    async def main() -> None:
        path = str(tmp_path / "s.sqlite")
        store = SqliteStore(path)
        await ops.apply(store, MESH, "t@h")
        res = Scripted()
        res.answers["b.test"] = Answer(("10.0.0.1:8080",), 0.02)
        first = DnsDiscovery(store, res)
        first.configure(parse_config(MESH))
        first.start()
        await until(lambda: _has(store, "b"))
        await first.stop()
        await store.close()

        store = SqliteStore(path)
        down = Scripted()  # every name fails
        plane = Plane(store, "glassmesh.local")
        plane.dns = DnsDiscovery(store, down)
        plane.start()
        try:
            await until(lambda: _true(len(down.asked) >= 3 and plane.snapshots.get("host1") is not None))
            assert endpoints(plane, "b") == [(EXTERNAL_HOST, "10.0.0.1:8080")]
            assert plane.dns.status()[0]["addresses"] == ["10.0.0.1:8080"]
            # The seeded answer was written back (lease renewed), not replaced with nothing.
            assert await dns_addrs(store, "b") == ["10.0.0.1:8080"]
            assert all(r.healthy for r in await store.instances() if r.host == EXTERNAL_HOST)
        finally:
            await plane.stop()
            await store.close()

    asyncio.run(main())


def test_an_answer_from_another_query_is_not_trusted(tmp_path: Path) -> None:
    """Records stored for `b.test` are not the last good answer of `b2.test` after the config changes."""

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        await store.put_instances(EXTERNAL_HOST, [InstanceRecord("b", EXTERNAL_HOST, "10.0.0.1:8080", True, "dns",
                                                                 detail="dns A b.test port 8080")], 900)
        d = DnsDiscovery(store, Scripted())
        d.configure(parse_config(MESH.replace("b.test", "b2.test")))
        d.start()
        try:
            await until(lambda: _true(d.status()[0]["failures"] >= 1))
            await until(_no_dns_b(store))
        finally:
            await d.stop()
            await store.close()

    asyncio.run(main())


async def _true(v: bool) -> bool:
    return v


async def _held(store: SqliteStore, service: str) -> bool:
    return service in await store.records("held")


async def _has(store: SqliteStore, service: str) -> bool:
    return bool(await dns_addrs(store, service))


def _no_dns_b(store: SqliteStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await dns_addrs(store, "b") == []
    return check
