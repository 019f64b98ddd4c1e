"""SqliteStore: history, compare-and-set, leases, records with TTL, and the change feed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from glassmesh.control.store import Conflict, HostRecord, InstanceRecord
from glassmesh.control.store_sqlite import SqliteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def run(tmp_path: Path, body: Callable[[SqliteStore], Awaitable[None]], clock: Clock | None = None) -> None:
    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"), **({"clock": clock} if clock else {}))
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_history_keeps_every_version_and_cas_conflicts(tmp_path: Path) -> None:
    async def body(s: SqliteStore) -> None:
        assert await s.current() is None
        v1 = await s.commit({"services": []}, "ann@h", "diff1", "sha1", expected_version=0)
        v2 = await s.commit({"services": [{"name": "a"}]}, "bob@h", "diff2", "sha2", expected_version=1, message="m")
        assert (v1.version, v2.version) == (1, 2)
        with pytest.raises(Conflict):
            await s.commit({}, "eve@h", "", "sha3", expected_version=1)
        cur = await s.current()
        assert cur is not None and cur.version == 2 and cur.doc == {"services": [{"name": "a"}]} and cur.message == "m"
        assert [v.version for v in await s.history()] == [2, 1]
        assert [v.version for v in await s.history(limit=1)] == [2]
        old = await s.get_version(1)
        assert old is not None and old.author == "ann@h" and old.diff == "diff1"
        assert await s.get_version(9) is None

    run(tmp_path, body)


def test_history_survives_reopening(tmp_path: Path) -> None:
    run(tmp_path, lambda s: s.commit({"x": 1}, "a", "", "h", expected_version=0))  # type: ignore[arg-type,return-value]

    async def body(s: SqliteStore) -> None:
        cur = await s.current()
        assert cur is not None and cur.doc == {"x": 1}

    run(tmp_path, body)


def test_instance_leases_expire_to_unhealthy(tmp_path: Path) -> None:
    clock = Clock()

    async def body(s: SqliteStore) -> None:
        await s.put_instances("host2", [InstanceRecord("b", "host2", "127.0.0.12:8080", True)], ttl_s=10)
        await s.put_instances("host3", [InstanceRecord("b", "host3", "127.0.0.13:8080", True)], ttl_s=30)
        assert all(i.healthy for i in await s.instances())
        clock.now += 11
        got = {i.host: i for i in await s.instances()}
        assert not got["host2"].healthy and "lease expired" in got["host2"].detail and got["host3"].healthy
        # A new report replaces everything the host said before.
        await s.put_instances("host2", [], ttl_s=10)
        assert [i.host for i in await s.instances()] == ["host3"]

    run(tmp_path, body, clock)


def test_records_and_ttl(tmp_path: Path) -> None:
    clock = Clock()

    async def body(s: SqliteStore) -> None:
        await s.put_record("held", "b", {"cause": "x"})
        await s.put_record("token", "t1", {"host": "h"}, ttl_s=5)
        assert await s.get_record("held", "b") == {"cause": "x"}
        assert set(await s.records("token")) == {"t1"}
        clock.now += 6
        assert await s.get_record("token", "t1") is None and await s.records("token") == {}
        assert await s.delete_record("token", "t1") is False
        assert await s.delete_record("held", "b") is True
        assert await s.delete_record("held", "b") is False  # consumed exactly once

    run(tmp_path, body, clock)


def test_hosts_round_trip(tmp_path: Path) -> None:
    async def body(s: SqliteStore) -> None:
        h = HostRecord("host1", ("a",), inbound="127.0.0.11:4143", snapshot_version=3,
                       last_reject={"version": 4, "reason": "bad"})
        await s.put_host(h)
        assert await s.hosts() == [h]
        assert await s.host("host1") == h and await s.host("host2") is None

    run(tmp_path, body)


def test_revision_grows_and_wait_for_change_wakes(tmp_path: Path) -> None:
    async def body(s: SqliteStore) -> None:
        r0 = await s.revision()
        t0 = time.monotonic()
        assert await s.wait_for_change(r0, 0.1) == r0 and time.monotonic() - t0 >= 0.09

        async def later() -> None:
            await asyncio.sleep(0.05)
            await s.put_record("drained", "b", {})

        task = asyncio.create_task(later())
        t0 = time.monotonic()
        r1 = await s.wait_for_change(r0, 5)
        assert r1 > r0 and time.monotonic() - t0 < 1
        await task

    run(tmp_path, body)


def test_lease_expiry_is_a_change(tmp_path: Path) -> None:
    async def body(s: SqliteStore) -> None:
        await s.put_instances("host2", [InstanceRecord("b", "host2", "127.0.0.12:8080", True)], ttl_s=0.2)
        r0 = await s.revision()
        t0 = time.monotonic()
        r1 = await s.wait_for_change(r0, 5)
        assert r1 > r0 and 0.15 < time.monotonic() - t0 < 2
        assert not (await s.instances())[0].healthy
        assert await s.wait_for_change(r1, 0.1) == r1  # expired once, noticed once

    run(tmp_path, body)


def test_create_record_writes_only_when_absent(tmp_path: Path) -> None:
    """Create-only (how the replicas agree on one CA): the first create wins, later ones read it, a TTL'd one expires."""
    clock = Clock()

    async def body(s: SqliteStore) -> None:
        rev = await s.revision()
        assert await s.create_record("ca", "root", {"n": 1}) is True
        assert await s.revision() == rev + 1
        assert await s.create_record("ca", "root", {"n": 2}) is False
        assert await s.get_record("ca", "root") == {"n": 1}
        assert await s.revision() == rev + 1  # a lost create writes nothing
        await s.put_record("tmp", "k", {"n": 1}, ttl_s=5)
        assert await s.create_record("tmp", "k", {"n": 2}) is False
        clock.now += 6  # expired but not swept yet: absent for create_record too
        assert await s.create_record("tmp", "k", {"n": 3}) is True
        clock.now += 3600  # and the created record has no TTL
        assert await s.get_record("tmp", "k") == {"n": 3}

    run(tmp_path, body, clock)
