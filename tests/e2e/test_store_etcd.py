"""The etcd Store against a real 3-member etcd 3.4 cluster (tests/etcd_cluster.py).

One cluster serves the whole module (it starts in well under a second);
each test works under its own key prefix, so tests never see each other's
state, and a test that kills a member restarts it before it ends.

The contract part mirrors what the SQLite store promises (history newest
first, compare-and-set, TTLs, single-use deletes, change feed); the rest is
what only a cluster can break: a second replica's writes, and a member
dying under a stream of writes and under an open watch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from glassmesh.control.store import Conflict, HostRecord, InstanceRecord, StoreError
from glassmesh.control.store_etcd import EtcdStore
from tests.etcd_cluster import EtcdCluster

StoreBody = Callable[..., Awaitable[Any]]


@pytest.fixture(scope="module")
def cluster() -> Any:
    with EtcdCluster.started() as c:
        yield c


def run_with_stores(cluster: EtcdCluster, body: StoreBody, replicas: int = 1, timeout_s: float = 30.0) -> Any:
    """Run body(*stores) in a fresh loop with `replicas` EtcdStores sharing one fresh prefix."""
    prefix = f"/gm-test/{uuid.uuid4().hex[:8]}"

    async def main() -> Any:
        stores = [EtcdStore(cluster.endpoints, prefix=prefix) for _ in range(replicas)]
        try:
            async with asyncio.timeout(timeout_s):
                return await body(*stores)
        finally:
            for s in stores:
                await s.close()

    return asyncio.run(main())


async def changed_since(s: EtcdStore, rev: int) -> bool:
    """Whether anything under s's prefix changed after rev (a watch replays it at once)."""
    try:
        async with asyncio.timeout(0.5):
            await s._first_change(rev + 1)
            return True
    except TimeoutError:
        return False


def inst(service: str, host: str, address: str, healthy: bool = True, detail: str = "") -> InstanceRecord:
    return InstanceRecord(service=service, host=host, address=address, healthy=healthy, detail=detail)


# --- the cluster itself -------------------------------------------------------


def test_cluster_is_three_healthy_members_that_started_fast(cluster: EtcdCluster) -> None:
    assert len(cluster.members) == 3
    assert all(m.running and m.healthy() for m in cluster.members)
    assert cluster.leader_index() is not None
    assert cluster.start_seconds < 5.0, f"cluster took {cluster.start_seconds:.1f}s to start"


# --- desired state ----------------------------------------------------------------


def test_commits_are_numbered_history_is_newest_first(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        assert await s.current() is None
        assert await s.history() == []
        for n in range(1, 4):
            cv = await s.commit({"services": {"b": {"n": n}}}, f"u{n}", f"diff {n}", f"sha{n}",
                                expected_version=n - 1, message=f"m{n}")
            assert cv.version == n
        cur = await s.current()
        assert cur is not None and cur.version == 3 and cur.doc == {"services": {"b": {"n": 3}}}
        assert [v.version for v in await s.history()] == [3, 2, 1]
        assert [v.version for v in await s.history(limit=2)] == [3, 2]
        v1 = await s.get_version(1)
        assert v1 is not None and (v1.author, v1.diff, v1.sha256, v1.message) == ("u1", "diff 1", "sha1", "m1")
        assert await s.get_version(9) is None

    run_with_stores(cluster, body)


def test_commit_with_a_stale_version_conflicts_and_changes_nothing(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        await s.commit({"v": 1}, "a", "", "h1", expected_version=0)
        with pytest.raises(Conflict):
            await s.commit({"v": "x"}, "a", "", "hx", expected_version=0)
        with pytest.raises(Conflict):
            await s.commit({"v": "x"}, "a", "", "hx", expected_version=5)
        assert [v.doc for v in await s.history()] == [{"v": 1}]

    run_with_stores(cluster, body)


def test_two_replicas_committing_at_once_exactly_one_wins(cluster: EtcdCluster) -> None:
    async def body(a: EtcdStore, b: EtcdStore) -> None:
        for expected in range(5):
            results = await asyncio.gather(
                a.commit({"by": "a"}, "a", "", "ha", expected_version=expected),
                b.commit({"by": "b"}, "b", "", "hb", expected_version=expected),
                return_exceptions=True)
            wins = [r for r in results if not isinstance(r, BaseException)]
            assert len(wins) == 1, results
            assert sum(isinstance(r, Conflict) for r in results) == 1, results
        assert [v.version for v in await b.history()] == [5, 4, 3, 2, 1]

    run_with_stores(cluster, body, replicas=2)


# --- live state ---------------------------------------------------------------------


def test_instances_expire_to_unhealthy_and_come_back_when_reported(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        await s.put_instances("h1", [inst("b", "h1", "127.0.0.1:8001"), inst("b", "h1", "127.0.0.1:8002")], ttl_s=1)
        await s.put_instances("h2", [inst("c", "h2", "127.0.0.2:9000")], ttl_s=30)
        got = await s.instances()
        assert {(i.host, i.address, i.healthy) for i in got} == {
            ("h1", "127.0.0.1:8001", True), ("h1", "127.0.0.1:8002", True), ("h2", "127.0.0.2:9000", True)}
        # h1 stops reporting: its 1 s lease expires (etcd may take up to ~1 s more), which
        # is a change every replica is woken for, and then its instances are unhealthy.
        r0 = await s.revision()
        t0 = time.monotonic()
        r1 = await s.wait_for_change(r0, 5)
        assert r1 > r0 and 0.5 < time.monotonic() - t0 < 3
        got = {i.address: i for i in await s.instances()}
        assert not got["127.0.0.1:8001"].healthy and "lease expired" in got["127.0.0.1:8001"].detail
        assert got["127.0.0.2:9000"].healthy  # h2's longer lease still holds
        # h1 reports again, one instance fewer: that replaces what it had.
        await s.put_instances("h1", [inst("b", "h1", "127.0.0.1:8002")], ttl_s=30)
        got = await s.instances()
        assert {(i.host, i.address, i.healthy) for i in got} == {
            ("h1", "127.0.0.1:8002", True), ("h2", "127.0.0.2:9000", True)}

    run_with_stores(cluster, body)


def test_a_repeated_report_renews_the_lease_without_a_write(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        report = [inst("b", "h1", "127.0.0.1:8001", detail="ok")]
        await s.put_instances("h1", report, ttl_s=2)
        rev = await s.revision()
        for _ in range(4):  # 3 s of reports every 0.75 s: longer than the lease
            await asyncio.sleep(0.75)
            await s.put_instances("h1", report, ttl_s=2)
        assert [i.healthy for i in await s.instances()] == [True]
        assert not await changed_since(s, rev), "an unchanged report must not wake every replica"
        await s.put_instances("h1", [inst("b", "h1", "127.0.0.1:8001", healthy=False, detail="refused")], ttl_s=2)
        assert await changed_since(s, rev)
        assert [(i.healthy, i.detail) for i in await s.instances()] == [(False, "refused")]

    run_with_stores(cluster, body)


def test_a_big_report_replaces_a_big_report_in_one_step(cluster: EtcdCluster) -> None:
    """300 instances in, 300 others in their place (beyond etcd's 128 ops per txn), then none."""
    async def body(s: EtcdStore) -> None:
        await s.put_instances("rack/1", [inst("b", "rack/1", f"10.0.0.1:{p}") for p in range(300)], ttl_s=30)
        await s.put_instances("rack/1", [inst("c", "rack/1", f"10.0.0.2:{p}") for p in range(300)], ttl_s=30)
        got = await s.instances()
        assert len(got) == 300 and {i.service for i in got} == {"c"} and all(i.healthy for i in got)
        await s.put_instances("rack/1", [], ttl_s=30)
        assert await s.instances() == []

    run_with_stores(cluster, body)


def test_hosts_round_trip(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        h = HostRecord(name="host-1", services=("a", "b"), inbound="127.0.0.1:4143", admin="127.0.0.1:4191",
                       last_seen=12.5, snapshot_version=7, last_reject={"version": 8, "reason": "bad"},
                       cert_not_after=99.0)
        await s.put_host(h)
        await s.put_host(HostRecord(name="host/2", services=()))
        assert sorted(await s.hosts(), key=lambda x: x.name) == [h, HostRecord(name="host/2", services=())]
        assert await s.host("host/2") == HostRecord(name="host/2", services=()) and await s.host("nope") is None

    run_with_stores(cluster, body)


# --- records ----------------------------------------------------------------------------


def test_records_with_and_without_ttl(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        await s.put_record("token", "t1", {"host": "h1"}, ttl_s=1)
        await s.put_record("token", "t/2", {"host": "h2"})
        await s.put_record("drain", "b", {"by": "me"})
        assert await s.records("token") == {"t1": {"host": "h1"}, "t/2": {"host": "h2"}}
        assert await s.get_record("drain", "b") == {"by": "me"}
        deadline = time.monotonic() + 5
        while await s.get_record("token", "t1") is not None:
            assert time.monotonic() < deadline, "a record with a 1 s TTL never expired"
            await asyncio.sleep(0.2)
        assert await s.records("token") == {"t/2": {"host": "h2"}}
        # Re-put without a TTL: the record must no longer be on a lease.
        await s.put_record("lease-test", "k", {"n": 1}, ttl_s=1)
        await s.put_record("lease-test", "k", {"n": 2})
        await asyncio.sleep(2.5)
        assert await s.get_record("lease-test", "k") == {"n": 2}

    run_with_stores(cluster, body)


def test_delete_record_is_true_exactly_once_across_replicas(cluster: EtcdCluster) -> None:
    async def body(a: EtcdStore, b: EtcdStore) -> None:
        keys = [f"tok{i}" for i in range(15)]
        for k in keys:
            await a.put_record("join", k, {"k": k}, ttl_s=60)
        results = await asyncio.gather(*(s.delete_record("join", k) for k in keys for s in (a, b, a)))
        for i, k in enumerate(keys):
            assert sum(results[3 * i: 3 * i + 3]) == 1, (k, results[3 * i: 3 * i + 3])
        assert await a.records("join") == {}
        assert await b.delete_record("join", "never-there") is False

    run_with_stores(cluster, body, replicas=2)


def test_create_record_exactly_one_wins_across_replicas(cluster: EtcdCluster) -> None:
    """Create-only across replicas: one True per key, every replica then reads the winner's value."""
    async def body(a: EtcdStore, b: EtcdStore) -> None:
        stores = (a, b, a, b)
        results = await asyncio.gather(*(s.create_record("ca", f"k{k}", {"by": i})
                                         for k in range(5) for i, s in enumerate(stores)))
        for k in range(5):
            won = results[4 * k: 4 * k + 4]
            assert sum(won) == 1, (k, won)
            value = {"by": won.index(True)}
            assert await a.get_record("ca", f"k{k}") == value and await b.get_record("ca", f"k{k}") == value
        assert (await b.records("ca"))["k0"] == await a.get_record("ca", "k0")  # no bookkeeping shows
        assert await a.delete_record("ca", "k0") is True
        assert await b.create_record("ca", "k0", {"by": "again"}) is True  # absent again after a delete

    run_with_stores(cluster, body, replicas=2)


def test_replicas_starting_at_once_share_one_ca(cluster: EtcdCluster, tmp_path: Any) -> None:
    """Each replica offers the CA it just made; all of them end up signing with the one etcd holds."""
    from glassmesh.control.identity import open_ca, shared_ca

    async def body(*stores: EtcdStore) -> None:
        local = [open_ca(tmp_path / f"r{i}" / "ca", "glassmesh.local") for i in range(len(stores))]
        got = await asyncio.gather(*(shared_ca(s, ca, tmp_path / f"r{i}" / "ca", b"a passphrase for the CA key")
                                     for i, (s, ca) in enumerate(zip(stores, local, strict=True))))
        assert len({ca.fingerprint for ca in got}) == 1
        assert sum(g is ca for g, ca in zip(got, local, strict=True)) == 1
        on_disk = {(tmp_path / f"r{i}" / "ca" / "ca.pem").read_bytes() for i in range(len(stores))}
        assert on_disk == {got[0].cert_pem}

    run_with_stores(cluster, body, replicas=3)


# --- change feed ---------------------------------------------------------------------------


def test_wait_for_change_wakes_on_another_replicas_write(cluster: EtcdCluster) -> None:
    async def body(a: EtcdStore, b: EtcdStore) -> None:
        rev = await a.revision()
        t0 = time.monotonic()
        waiter = asyncio.create_task(a.wait_for_change(rev, timeout_s=10))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await b.put_record("drain", "svc", {"on": True})
        got = await waiter
        assert got > rev
        assert time.monotonic() - t0 < 2.0
        # A change already made before the call returns at once.
        t1 = time.monotonic()
        assert await a.wait_for_change(rev, timeout_s=5) > rev
        assert time.monotonic() - t1 < 1.0

    run_with_stores(cluster, body, replicas=2)


def test_wait_for_change_from_the_start_returns_at_once(cluster: EtcdCluster) -> None:
    """The compile loop starts with wait_for_change(-1, ...): that must not wait for a write."""
    async def body(s: EtcdStore) -> None:
        t0 = time.monotonic()
        assert await s.wait_for_change(-1, 5) == await s.revision()
        assert time.monotonic() - t0 < 1

    run_with_stores(cluster, body)


def test_wait_for_change_times_out_and_ignores_other_prefixes(cluster: EtcdCluster) -> None:
    async def body(a: EtcdStore) -> None:
        other = EtcdStore(cluster.endpoints, prefix=f"/gm-other/{uuid.uuid4().hex[:8]}")
        try:
            rev = await a.revision()
            waiter = asyncio.create_task(a.wait_for_change(rev, timeout_s=1.0))
            await asyncio.sleep(0.2)
            await other.put_record("x", "y", {})  # another etcd user's write
            t0 = time.monotonic()
            got = await waiter
            assert time.monotonic() - t0 > 0.5, "woke for a write outside its prefix"
            assert got >= rev
        finally:
            await other.close()

    run_with_stores(cluster, body)


def test_wait_for_change_after_compaction_returns_promptly(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        old = await s.revision()
        await s.put_record("k", "a", {})
        await s.put_record("k", "a", {"n": 2})
        now = await s.revision()
        await s._client.call("kv/compaction", {"revision": str(now)})
        t0 = time.monotonic()
        assert await s.wait_for_change(old, timeout_s=5) > old
        assert time.monotonic() - t0 < 1.5

    run_with_stores(cluster, body)


def test_close_ends_a_pending_wait(cluster: EtcdCluster) -> None:
    async def body(s: EtcdStore) -> None:
        waiter = asyncio.create_task(s.wait_for_change(await s.revision(), timeout_s=20))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await s.close()
        try:
            await asyncio.wait_for(waiter, 3)
        except StoreError:
            pass
        assert time.monotonic() - t0 < 3
        with pytest.raises(StoreError):
            await s.current()

    run_with_stores(cluster, body)


# --- failures of cluster members ------------------------------------------------------------


def test_killing_a_member_under_writes_loses_no_acknowledged_write(cluster: EtcdCluster) -> None:
    """Kill the leader mid-stream of commits and record puts; every acknowledged one survives."""
    victim = cluster.leader_index()
    assert victim is not None

    async def body(a: EtcdStore, b: EtcdStore) -> dict[str, float]:
        acked_records: list[str] = []
        acked_versions: list[int] = []
        stalls: list[float] = []
        stop = asyncio.Event()

        async def writer(s: EtcdStore, tag: str) -> None:
            i = 0
            while not stop.is_set():
                t = time.monotonic()
                await s.put_record("w", f"{tag}{i}", {"i": i})
                acked_records.append(f"{tag}{i}")
                stalls.append(time.monotonic() - t)
                i += 1

        async def committer(s: EtcdStore) -> None:
            while not stop.is_set():
                cur = await s.current()
                expected = cur.version if cur else 0
                try:
                    cv = await s.commit({"n": expected + 1}, "loop", "", f"h{expected}", expected)
                except Conflict:
                    continue  # the other replica's committer got there first
                acked_versions.append(cv.version)

        tasks = [asyncio.create_task(writer(a, "a")), asyncio.create_task(writer(b, "b")),
                 asyncio.create_task(committer(a)), asyncio.create_task(committer(b))]
        await asyncio.sleep(0.7)
        before = len(acked_records)
        t_kill = time.monotonic()
        cluster.kill(victim)
        await asyncio.sleep(2.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert len(acked_records) > before + 10, "writes did not go on after the kill"
        # Every acknowledged write is there, read through a replica that may use any member.
        stored = await b.records("w")
        missing = [k for k in acked_records if k not in stored]
        assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:5]}"
        history = [v.version for v in await a.history(limit=10_000)]
        assert history == sorted(set(history), reverse=True) and history[-1] == 1
        assert set(acked_versions) <= set(history)
        assert len(acked_versions) == len(set(acked_versions)), "a version was acknowledged twice"
        assert history[0] == len(history), "versions must have no gaps"
        return {"writes": len(acked_records), "commits": len(acked_versions),
                "max_stall_s": max(stalls), "since_kill_s": time.monotonic() - t_kill}

    try:
        stats = run_with_stores(cluster, body, replicas=2)
        print(f"member kill under writes: {stats}")
    finally:
        cluster.restart(victim)
    cluster.wait_healthy()


def test_a_watch_on_a_killed_member_moves_on(cluster: EtcdCluster) -> None:
    async def body(a: EtcdStore, b: EtcdStore) -> None:
        rev = await a.revision()
        waiter = asyncio.create_task(a.wait_for_change(rev, timeout_s=15))
        await asyncio.sleep(0.3)
        victim = a._client._current  # the member a's watch stream is on
        cluster.kill(victim)
        try:
            await asyncio.sleep(0.3)
            assert not waiter.done(), "a broken watch must not look like a change"
            t0 = time.monotonic()
            await b.put_record("after-kill", "x", {})
            assert await waiter > rev
            assert time.monotonic() - t0 < 5
        finally:
            cluster.restart(victim)

    run_with_stores(cluster, body, replicas=2)
    cluster.wait_healthy()


def test_store_works_with_one_member_down_from_the_start(cluster: EtcdCluster) -> None:
    cluster.kill(0)
    try:
        async def body(s: EtcdStore) -> None:
            s._client._current = 0  # start on the dead member: the first call must fail over
            await s.commit({"ok": True}, "a", "", "h", 0)
            assert (await s.current()).doc == {"ok": True}  # type: ignore[union-attr]

        run_with_stores(cluster, body)
    finally:
        cluster.restart(0)
    cluster.wait_healthy()


def test_store_error_when_no_member_answers() -> None:
    async def body() -> None:
        s = EtcdStore(["http://127.0.0.1:1", "127.0.0.1:2"], retry_deadline_s=0.5)
        try:
            with pytest.raises(StoreError):
                await s.current()
        finally:
            await s.close()

    asyncio.run(body())


def test_from_url_parses_the_cli_form() -> None:
    s = EtcdStore.from_url("etcd://h1:2379,h2:2379,http://h3:2379")
    assert s._client.endpoints == ["http://h1:2379", "http://h2:2379", "http://h3:2379"]
