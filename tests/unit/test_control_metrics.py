"""metrics.HoldCounter and render: a hold is counted once when it starts, however often the loop rewrites it.

In one process, against a real SqliteStore and the real compile loop step
(Plane.compile_once): the counter must not grow while the same hold goes on
(the loop rewrites its record when the cause changes), must grow for a new
hold after a release, and /metrics must show both the gauge and the counter.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from glassmesh.control import metrics, ops
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
  - {name: host4, address: 127.0.0.14:4143, services: [b]}
"""


def test_a_hold_is_counted_once_and_shows_in_metrics(tmp_path: Path) -> None:
    async def report(store: SqliteStore, up: list[str]) -> None:
        for h in ("host2", "host3", "host4"):
            recs = [InstanceRecord("b", h, f"127.0.0.1{h[-1]}:8080", True)] if h in up else []
            await store.put_instances(h, recs, 30)

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        counter = metrics.HoldCounter(store)
        plane = Plane(counter, "glassmesh.local")
        try:
            await ops.apply(store, MESH, "t@h")
            await report(store, ["host2", "host3", "host4"])
            await plane.compile_once()
            assert metrics.holds_started(counter) == {}
            await report(store, ["host2"])  # 2 of 3 gone: held (> 50%)
            await plane.compile_once()
            await report(store, [])  # still the same hold, now with another cause: not a new one
            await plane.compile_once()
            held = await store.records("held")
            assert "every endpoint" in held["b"]["cause"] and counter.counts == {"b": 1}
            text = metrics.render(await ops.status(store, plane, "r1")).decode()
            assert 'glassmesh_control_held_changes{service="b"} 1.0' in text
            assert 'glassmesh_control_holds_total{service="b"} 1.0' in text
            await ops.release(store, "b")
            await plane.compile_once()
            text = metrics.render(await ops.status(store, plane, "r1")).decode()
            assert 'glassmesh_control_held_changes{service="b"} 0.0' in text
            assert 'glassmesh_control_holds_total{service="b"} 1.0' in text
            await report(store, ["host2", "host3", "host4"])
            await plane.compile_once()
            await report(store, [])
            await plane.compile_once()
            assert counter.counts == {"b": 2}
            assert metrics.holds_started(store) == {}  # only the compile loop's store counts
        finally:
            await store.close()

    asyncio.run(main())
