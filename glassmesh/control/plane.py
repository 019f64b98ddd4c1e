"""One control-plane replica's live part: the compile loop and the snapshots it keeps in memory.

Every replica compiles from the shared store whenever its revision moves (an
apply, an instance report, a lease expiring, a release or a drain), so any
replica can serve any proxy. Snapshot versions are store revisions, which all
replicas share, so versions from different replicas stay comparable.

Between compile and push sits the guard: the endpoints last pushed for each
service (kept in the store, so a restarted replica still knows them) are
compared with the new ones, and a change that would wipe out a service is
held, recorded for `status`, and kept out of the snapshots until released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from glassmesh.control.compile import compile_snapshots, healthy_instances
from glassmesh.control.config import MeshConfig, from_doc
from glassmesh.control.dns import DnsDiscovery, Resolver
from glassmesh.control.guard import Decision, InstanceKey, guard
from glassmesh.control.store import Store, StoreError
from glassmesh.model.snapshot import Snapshot

log = logging.getLogger("glassmesh.control")
DEBOUNCE_S = 0.02  # let a burst of writes (200 acks) settle into one compile
MIN_INTERVAL_S = 0.1  # at most ten looks at the store a second


def _fingerprint(config_version: int, instances: list[Any], hosts: list[Any],
                 pushed: dict[str, Any], drained: set[str]) -> bytes:
    """Everything a compile reads, and nothing it does not (report times, acks, last-seen)."""
    return msgspec.json.encode([
        config_version,
        sorted((r.service, r.host, r.address, r.healthy, r.source) for r in instances),
        sorted((h.name, list(h.services), h.inbound, h.admin) for h in hosts),
        sorted((k, _keys(v)) for k, v in pushed.items()),
        sorted(drained),
    ])


def _keys(value: dict[str, Any] | None) -> list[InstanceKey]:
    return sorted((h, a) for h, a in (value or {}).get("endpoints", []))


class Plane:
    """Compiled snapshots per host, the guard's decisions, and the long-poll wake-ups."""

    def __init__(self, store: Store, trust_domain: str, dns_servers: Sequence[str] = ()) -> None:
        self.store = store
        self.trust_domain = trust_domain
        self.snapshots: dict[str, Snapshot] = {}
        self.born: dict[str, dict[int, float]] = {}  # host -> version -> when this replica made it
        self.polled: dict[str, float] = {}  # host -> last long-poll seen by this replica
        self.revision = -1  # the store revision the snapshots were compiled at
        self.config = MeshConfig()
        self.config_version = 0
        self.last_error = ""
        self._encoded: dict[str, tuple[int, bytes]] = {}
        self._inputs = b""  # fingerprint of what the snapshots in hand were compiled from
        self._wake = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        # DNS discovery (services with `dns:`): its answers go into the store as instances of the
        # pseudo-host "external", so they reach compile (and every replica) like any other report.
        self.dns = DnsDiscovery(store, Resolver(dns_servers))

    # --- the loop ------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="compile-loop")
        self.dns.start()

    async def stop(self) -> None:
        await self.dns.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        rev = -1
        while True:
            try:
                rev = await self.store.wait_for_change(rev, 30.0)
                if rev == self.revision:
                    continue
                await asyncio.sleep(DEBOUNCE_S)
                started = time.monotonic()
                await self.compile_once()
                self.last_error = ""
                # A push is followed by an ack from every host, each a store write: reading the
                # store for each of them one by one cost more than the compile it saves.
                await asyncio.sleep(max(0.0, MIN_INTERVAL_S - (time.monotonic() - started)))
            except asyncio.CancelledError:
                raise
            except StoreError as e:  # store down: keep serving what we have, try again soon
                self.last_error = f"store: {e}"
                log.warning("compile loop: %s", e)
                await asyncio.sleep(1.0)
            except Exception as e:  # a bug must not stop pushes for good
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("compile loop failed")
                await asyncio.sleep(1.0)

    async def compile_once(self) -> None:
        """Read the store, guard, compile, and wake the long-polls whose host got a new version."""
        store = self.store
        rev = await store.revision()
        cur = await store.current()
        cfg = from_doc(cur.doc) if cur else MeshConfig()
        self.dns.configure(cfg)  # follow `dns:` changes; answers come back through the store
        instances = await store.instances()
        hosts = await store.hosts()
        pushed = await store.records("pushed")
        drained = set(await store.records("drained"))
        inputs = _fingerprint(cur.version if cur else 0, instances, hosts, pushed, drained)
        if inputs == self._inputs:
            # Only things compile does not read moved (an ack, a report that changed nothing
            # but its time): 200 acks after a push must not mean 200 compiles.
            self.revision = rev
            return
        decision = guard(
            {s: _keys(v) for s, v in pushed.items()},
            healthy_instances(cfg, instances, hosts),
            max_drop={s.name: s.max_endpoint_drop for s in cfg.services},
            drained=drained,
        )
        await self._record(decision, pushed, cfg)
        # On the event loop: in a thread, it fought the long-poll answers for the GIL and a
        # change reached 200 hosts later (bench/control_push.py: p50 2.2 s against 1.4 s).
        snaps = compile_snapshots(cfg, instances, hosts, trust_domain=self.trust_domain,
                                  versions=self.snapshots, endpoints=decision.push, version=rev, drained=drained)
        # What _record just wrote is part of the inputs this compile answers.
        self._inputs = _fingerprint(cur.version if cur else 0, instances, hosts,
                                    await store.records("pushed"), drained)
        now = time.time()
        for h, s in snaps.items():
            if self.snapshots.get(h) is not s:
                born = self.born.setdefault(h, {})
                born[s.version] = now
                for v in sorted(born)[:-20]:
                    del born[v]
        self.snapshots = snaps
        self.config, self.config_version, self.revision = cfg, (cur.version if cur else 0), rev
        async with self._wake:
            self._wake.notify_all()

    async def _record(self, d: Decision, pushed: dict[str, dict[str, Any]], cfg: MeshConfig) -> None:
        """Keep the store's record of what went out and what is held in step with the decision."""
        store = self.store
        for svc, keys in d.push.items():
            if _keys(pushed.get(svc)) != keys:
                await store.put_record("pushed", svc, {"endpoints": [list(k) for k in keys]})
        names = {s.name for s in cfg.services}
        for svc in pushed:
            if svc not in names:
                await store.delete_record("pushed", svc)
        held = await store.records("held")
        for svc, h in d.held.items():
            old = held.get(svc)
            if old is None or {k: v for k, v in old.items() if k != "since"} != h.to_json():
                await store.put_record("held", svc, {**h.to_json(), "since": (old or {}).get("since", time.time())})
                log.warning("held: %s", h.cause)
        for svc in held:
            if svc not in d.held:
                await store.delete_record("held", svc)

    # --- serving --------------------------------------------------------------------
    def encoded(self, host: str) -> bytes | None:
        """The host's snapshot as compact JSON, encoded once per version and shared by its long-polls."""
        snap = self.snapshots.get(host)
        if snap is None:
            return None
        hit = self._encoded.get(host)
        if hit is None or hit[0] != snap.version:
            hit = (snap.version, msgspec.json.encode(snap))  # compact: a third of the indented size
            self._encoded[host] = hit
        return hit[1]

    async def wait_snapshot(self, host: str, after: int, wait_s: float) -> Snapshot | None:
        """The host's snapshot once its version is above `after`, or None after wait_s."""
        self.polled[host] = time.time()
        snap = self.snapshots.get(host)
        if snap is not None and after > snap.version:
            # The proxy ran a later version from another replica; we cannot tell whether its
            # content matches ours, so re-stamp ours above it: one redundant reload, never a stale one.
            snap = msgspec.structs.replace(snap, version=max(after + 1, self.revision))
            self.snapshots[host] = snap
            self.born.setdefault(host, {})[snap.version] = time.time()
        deadline = asyncio.get_running_loop().time() + wait_s
        async with self._wake:
            while True:
                snap = self.snapshots.get(host)
                if snap is not None and snap.version > after:
                    return snap
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
