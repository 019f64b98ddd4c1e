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
