"""The compile loop's guard, end to end in one process: reports in, held change out, release."""

from __future__ import annotations

import asyncio
from pathlib import Path

from glassmesh.control import ops
from glassmesh.control.plane import Plane
from glassmesh.control.store import InstanceRecord
from glassmesh.control.store_sqlite import SqliteStore

MESH = """\
services:
  - {name: a}
  - {name: b, port: 8080}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
  - {name: host2, address: 127.0.0.12:4143, services: [b]}
  - {name: host3, address: 127.0.0.13:4143, services: [b]}
"""


def b_hosts(plane: Plane) -> list[str]:
    svc = plane.snapshots["host1"].service("b")
    return [e.host for e in svc.endpoints] if svc else []


def test_wipe_out_is_held_then_released(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        plane = Plane(store, "glassmesh.local")
        out = await ops.apply(store, MESH, "t@h")
        assert out["version"] == 1 and out["committed"]
        for h in ("host2", "host3"):
            await store.put_instances(h, [InstanceRecord("b", h, f"127.0.0.{h[-1]}{h[-1]}:8080", True)], 30)
        await plane.compile_once()
        v1 = plane.snapshots["host1"].version
        assert b_hosts(plane) == ["host2", "host3"]
        await store.put_instances("host2", [], 30)
        await store.put_instances("host3", [], 30)
        await plane.compile_once()
        assert b_hosts(plane) == ["host2", "host3"] and plane.snapshots["host1"].version == v1
        held = await store.records("held")
        assert "every endpoint" in held["b"]["cause"]
        status = await ops.status(store, plane, "r1")
        assert [h["service"] for h in status["held"]] == ["b"]
        await ops.release(store, "b")
        await plane.compile_once()
        assert b_hosts(plane) == [] and plane.snapshots["host1"].version > v1
        assert await store.records("held") == {}
        await store.close()

    asyncio.run(main())


def test_unchanged_apply_and_rollback(tmp_path: Path) -> None:
    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        await ops.apply(store, MESH, "t@h")
        again = await ops.apply(store, MESH, "t@h")
        assert not again["committed"] and again["diff"] == ""
        v2 = await ops.apply(store, MESH.replace("port: 8080", "port: 8090"), "t@h")
        assert v2["version"] == 2 and "+  port: 8090" in v2["diff"]
        back = await ops.rollback(store, 1, "t@h")
        assert back["version"] == 3 and "-  port: 8090" in back["diff"]
        cur = await store.current()
        assert cur is not None and cur.message == "rollback to version 1" and "rollback to 1" in cur.author
        await store.close()

    asyncio.run(main())


def test_answers_deltas_against_versions_it_still_has(tmp_path: Path) -> None:
    """A poll naming a version this replica kept (and its digest) gets a delta; anything else the full snapshot."""
    from glassmesh.api.wire import KIND_DELTA, KIND_FULL, apply_delta, decode_delta
    from glassmesh.model.snapshot import decode_snapshot, snapshot_digest

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        plane = Plane(store, "glassmesh.local")
        await ops.apply(store, MESH, "t@h")
        for h in ("host2", "host3"):
            await store.put_instances(h, [InstanceRecord("b", h, f"127.0.0.{h[-1]}{h[-1]}:8080", True)], 30)
        await plane.compile_once()
        v1 = plane.snapshots["host1"]
        kind, body, d1 = plane.answer("host1", v1)
        assert kind == KIND_FULL and decode_snapshot(body) == v1 and d1 == snapshot_digest(v1)
        assert plane.answer("host1", v1)[1] is body  # encoded once, shared by every poll that asks

        await store.put_instances("host3", [InstanceRecord("b", "host3", "127.0.0.33:8080", False)], 30)
        await plane.compile_once()
        v2 = plane.snapshots["host1"]
        assert v2.version > v1.version
        kind, body, d2 = plane.answer("host1", v2, v1.version, d1)
        assert kind == KIND_DELTA and len(body) < 300
        delta = decode_delta(body)
        assert [s.name for s in delta.services] == ["b"] and delta.hash == d2
        assert apply_delta(v1, d1, delta) == v2
        assert plane.answer("host1", v2, v1.version, d1)[1] is body
        # A base digest that is not ours, a version we never made: the full snapshot.
        assert plane.answer("host1", v2, v1.version, "0" * 64)[0] == KIND_FULL
        assert plane.answer("host1", v2, v1.version - 1, d1)[0] == KIND_FULL
        assert plane.served == {KIND_FULL: 4, KIND_DELTA: 2}
        await store.close()

    asyncio.run(main())


def test_history_is_bounded(tmp_path: Path) -> None:
    from glassmesh.api.wire import KIND_FULL
    from glassmesh.control.plane import HISTORY

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        plane = Plane(store, "glassmesh.local")
        await ops.apply(store, MESH, "t@h")
        await store.put_instances("host2", [InstanceRecord("b", "host2", "127.0.0.22:8080", True)], 30)
        await plane.compile_once()
        first = plane.snapshots["host1"]
        d = plane.digest("host1", first)
        for i in range(HISTORY + 2):
            await store.put_instances("host3", [InstanceRecord("b", "host3", "127.0.0.33:8080", i % 2 == 0)], 30)
            await plane.compile_once()
        assert len(plane.history["host1"]) == HISTORY and first.version not in plane.history["host1"]
        assert plane.answer("host1", plane.snapshots["host1"], first.version, d)[0] == KIND_FULL
        await store.close()

    asyncio.run(main())


def test_acks_are_written_in_batches_without_a_look_at_the_store(tmp_path: Path) -> None:
    """200 acks after a push: one burst of writes, and no compile-loop look at 10,000 instances for them."""

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        plane = Plane(store, "glassmesh.local")
        await ops.apply(store, MESH, "t@h")
        await plane.compile_once()
        # First acks create the host records (hosts compile may read): the next look recompiles nothing.
        await asyncio.gather(*(plane.record_ack(h, 1, True, "") for h in ("host1", "host2", "host3")))
        rev = await store.revision()
        assert plane.revision < rev
        await plane.compile_once()
        looks = plane.looks
        v = plane.snapshots["host1"].version
        plane.start()
        try:
            await asyncio.gather(*(plane.record_ack(h, v, True, "") for h in ("host1", "host2", "host3")),
                                 plane.record_ack("host3", v + 1, False, "listener addresses changed"))
            assert plane.revision == await store.revision() == rev + 3  # one write per host
            await asyncio.sleep(0.3)
            assert plane.looks == looks  # the compile loop saw the revision move and knew why
            hosts = {h.name: h for h in await store.hosts()}
            assert hosts["host1"].snapshot_version == v and hosts["host3"].last_reject["version"] == v + 1
            # Any other write still gets its look.
            await store.put_instances("host2", [InstanceRecord("b", "host2", "127.0.0.22:8080", True)], 30)
            for _ in range(50):
                await asyncio.sleep(0.02)
                if plane.looks > looks:
                    break
            assert plane.looks > looks
        finally:
            await plane.stop()
            await store.close()

    asyncio.run(main())


def test_every_reject_is_counted_and_the_last_ten_are_kept(tmp_path: Path) -> None:
    """`glassmesh status` and /metrics show every reject a host sent, not only the last one."""
    from glassmesh.control.metrics import render as render_status
    from glassmesh.control.store import RECENT_REJECTS

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        plane = Plane(store, "glassmesh.local")
        await ops.apply(store, MESH, "t@h")
        await plane.compile_once()
        for i in range(RECENT_REJECTS + 3):
            await plane.record_ack("host3", 100 + i, False, f"bad snapshot {i}")
        await plane.record_ack("host3", 7, True, "")
        doc = await ops.status(store, plane, "r1")
        host3 = next(h for h in doc["hosts"] if h["name"] == "host3")
        assert host3["rejects"] == RECENT_REJECTS + 3
        assert [r["reason"] for r in host3["recent_rejects"]] == [
            f"bad snapshot {i}" for i in range(3, RECENT_REJECTS + 3)]
        assert host3["last_reject"]["reason"] == f"bad snapshot {RECENT_REJECTS + 2}" and host3["running"] == 7
        text = render_status(doc).decode()
        assert f'glassmesh_control_snapshot_rejects_total{{host="host3"}} {RECENT_REJECTS + 3}.0' in text
        assert 'glassmesh_control_snapshot_rejects_total{host="host1"} 0.0' in text
        await store.close()

    asyncio.run(main())


def test_status_names_features_a_hosts_snapshot_needs_that_its_proxy_lacks(tmp_path: Path) -> None:
    """What the control plane learnt from each proxy's headers (api/wire.py) against what its snapshot requires."""
    import msgspec

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        plane = Plane(store, "glassmesh.local")
        await ops.apply(store, MESH, "t@h")
        await plane.compile_once()
        plane.snapshots["host1"] = msgspec.structs.replace(plane.snapshots["host1"], requires=["teleport"])
        plane.proxies["host1"] = {"wire": 1, "build": "0.1.0", "features": [], "refused": None}
        plane.proxies["host2"] = {"wire": 1, "build": "0.1.0", "features": ["teleport"], "refused": None}
        plane.snapshots["host2"] = msgspec.structs.replace(plane.snapshots["host2"], requires=["teleport"])
        rows = {h["name"]: h for h in (await ops.status(store, plane, "r1"))["hosts"]}
        assert rows["host1"]["lacks"] == ["teleport"] and rows["host2"]["lacks"] == []
        assert rows["host3"]["lacks"] == [] and rows["host3"]["proxy"] is None  # never heard from: nothing known
        assert rows["host1"]["proxy"]["build"] == "0.1.0"
        await store.close()

    asyncio.run(main())
