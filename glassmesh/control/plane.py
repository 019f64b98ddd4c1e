"""One control-plane replica's live part: the compile loop and the snapshots it keeps in memory.

Every replica compiles from the shared store whenever its revision moves (an
apply, an instance report, a lease expiring, a release or a drain), so any
replica can serve any proxy. Snapshot versions are store revisions, which all
replicas share, so versions from different replicas stay comparable.

Between compile and push sits the guard: the endpoints last pushed for each
service (kept in the store, so a restarted replica still knows them) are
compared with the new ones, and a change that would wipe out a service is
held, recorded for `status`, and kept out of the snapshots until released.

Serving: each host's last few versions are kept (they share their Service
objects, so this costs a list of pointers per version), so a long-poll that
says which version it holds, and that version's digest, is answered with a
delta against it (a few hundred bytes for a one-endpoint change) instead of
the whole snapshot (~475 KiB for 1,000 services). Bodies are encoded once
per host and version (and base) and shared by every long-poll that asks.

Acks: every push is followed by an ack from each host, and each ack is a
store write that moves the revision. A look at the store (config, 10,000
instances, 1,000 pushed records) costs ~0.1-0.2 s of CPU for a large mesh, so
acks are written in batches (one every ACK_BATCH_S), and a batch that was
the only write since the last look advances the revision without a look:
200 acks after a change cost a few bursts of writes, not twenty looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from glassmesh.api.wire import KIND_DELTA, KIND_FULL, ServicesDiff, diff_services, make_delta
from glassmesh.control.compile import compile_snapshots, healthy_instances
from glassmesh.control.config import MeshConfig, from_doc
from glassmesh.control.dns import DnsDiscovery, Resolver
from glassmesh.control.guard import Decision, InstanceKey, guard
from glassmesh.control.store import RECENT_REJECTS, HostRecord, Store, StoreError
from glassmesh.model.snapshot import DigestCache, Snapshot, snapshot_digest
from glassmesh.stopping import cancel_and_wait

log = logging.getLogger("glassmesh.control")
DEBOUNCE_S = 0.02  # let a burst of writes (200 acks) settle into one compile
MIN_INTERVAL_S = 0.1  # at most ten looks at the store a second
# Versions of each host's snapshot kept to answer deltas against: a watching proxy is one
# version behind when a change lands, one that missed a few changes (a blip) a few more.
HISTORY = 6
ACK_BATCH_S = 0.05  # acks arriving within this are written together


@dataclasses.dataclass
class _PendingAck:
    host: str
    version: int
    accepted: bool
    reason: str
    at: float
    done: asyncio.Future[None]


class _Kept:
    """One version of a host's snapshot this replica can serve or diff against; its digest once asked."""

    __slots__ = ("digest", "snap")

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap
        self.digest = ""


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
        # Hosts this replica last heard from over the insecure plain listener (status marks them).
        self.insecure: set[str] = set()
        # Each host's proxy as its last call described it (api/wire.py WIRE_HEADER...): wire, build, features.
        self.proxies: dict[str, dict[str, Any]] = {}
        self.builds: dict[str, str] = {}  # host -> the hot-path build its acks name, as last written to the store
        self.ack_warnings: dict[str, str] = {}  # host -> the warning its last accepting ack carried ("" none)
        self.clocks: dict[str, tuple[float, float]] = {}  # host -> (its clock minus ours in s, when we saw it)
        self.revision = -1  # the store revision the snapshots were compiled at
        self.config = MeshConfig()
        self.config_version = 0
        self.last_error = ""
        self._encoded: dict[str, tuple[int, bytes]] = {}
        self.history: dict[str, dict[int, _Kept]] = {}  # host -> version -> the last HISTORY versions
        self._deltas: dict[str, dict[tuple[int, int], bytes]] = {}  # host -> (base, version) -> body
        # Service-list diffs, shared by the hosts that share both lists (every host, all-to-all):
        # (id(base list), id(new list)) -> (base list, new list, diff); the lists are kept so ids stay theirs.
        self._list_diffs: dict[tuple[int, int], tuple[list[Any], list[Any], ServicesDiff]] = {}
        self._digests = DigestCache()  # per-service digests, shared by every host's snapshot
        self.served = {KIND_FULL: 0, KIND_DELTA: 0}  # snapshot answers of each kind, since start
        self._acks: list[_PendingAck] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._cfg_cache: tuple[int, MeshConfig] | None = None  # (config version, parsed): parsed once per version
        self.looks = 0  # looks at the store (compile_once), for tests and benchmarks
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
        await cancel_and_wait(self._ack_task, self._task)  # a cancellation of the caller goes through

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
        self.looks += 1
        rev = await store.revision()
        cur = await store.current()
        cfg = self._config(cur.version, cur.doc) if cur else MeshConfig()
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
        pushed_now = await self._record(decision, pushed, cfg)
        # On the event loop: in a thread, it fought the long-poll answers for the GIL and a
        # change reached 200 hosts later (bench/control_push.py: p50 2.2 s against 1.4 s).
        snaps = compile_snapshots(cfg, instances, hosts, trust_domain=self.trust_domain,
                                  versions=self.snapshots, endpoints=decision.push, version=rev, drained=drained)
        # What _record just wrote is part of the inputs this compile answers (as written, not read
        # back: 1,000 pushed records cost a quarter of a look to decode).
        self._inputs = _fingerprint(cur.version if cur else 0, instances, hosts, pushed_now, drained)
        now = time.time()
        for h, s in snaps.items():
            if self.snapshots.get(h) is not s:
                self._remember(h, s, now)
        for h in [h for h in self.history if h not in snaps]:
            del self.history[h]
            self._deltas.pop(h, None)
        self._digests.forget_except({s.name for s in cfg.services})
        self.snapshots = snaps
        self.config, self.config_version, self.revision = cfg, (cur.version if cur else 0), rev
        async with self._wake:
            self._wake.notify_all()

    def _config(self, version: int, doc: dict[str, Any]) -> MeshConfig:
        """The parsed config of a version, parsed once (a look at the store must not re-parse 1,000 services)."""
        if self._cfg_cache is None or self._cfg_cache[0] != version:
            self._cfg_cache = (version, from_doc(doc))
        return self._cfg_cache[1]

    async def _record(self, d: Decision, pushed: dict[str, dict[str, Any]],
                      cfg: MeshConfig) -> dict[str, dict[str, Any]]:
        """Keep the store's record of what went out and what is held in step with the decision.

        Returns the "pushed" records as they now are in the store.
        """
        store = self.store
        names = {s.name for s in cfg.services}
        now = {svc: v for svc, v in pushed.items() if svc in names}
        for svc, keys in d.push.items():
            if _keys(pushed.get(svc)) != keys:
                now[svc] = {"endpoints": [list(k) for k in keys]}
                await store.put_record("pushed", svc, now[svc])
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
        return now

    # --- acks ------------------------------------------------------------------------
    async def record_ack(self, host: str, version: int, accepted: bool, reason: str) -> None:
        """Record a host's ack in its HostRecord; returns once written (raises StoreError if it could not be).

        Acks that arrive within ACK_BATCH_S of each other are written in one
        burst: see the module docstring for why.
        """
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.append(_PendingAck(host, version, accepted, reason, time.time(), done))
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._write_acks(), name="ack-batch")
        await asyncio.shield(done)

    def _host_from_config(self, host: str) -> HostRecord:
        cfg = self.config.host(host)
        return HostRecord(name=host, services=tuple(cfg.services) if cfg else (), inbound=cfg.address if cfg else "",
                          admin=(cfg.admin or "") if cfg else "")

    async def _write_acks(self) -> None:
        await asyncio.sleep(ACK_BATCH_S)
        batch, self._acks = self._acks, []
        self._ack_task = None
        store = self.store
        try:
            before = await store.revision()
            known = {h.name: h for h in await store.hosts()}
            by_host: dict[str, HostRecord] = {}
            for a in batch:
                rec = by_host.get(a.host) or known.get(a.host) or self._host_from_config(a.host)
                if a.accepted:
                    rec = dataclasses.replace(rec, snapshot_version=a.version, last_seen=a.at)
                else:
                    rej = {"version": a.version, "reason": a.reason, "at": a.at}
                    rec = dataclasses.replace(rec, last_seen=a.at, last_reject=rej, rejects=rec.rejects + 1,
                                              recent_rejects=[*rec.recent_rejects, rej][-RECENT_REJECTS:])
                by_host[a.host] = rec
            for rec in by_host.values():
                await store.put_host(rec)
            after = await store.revision()
        except Exception as e:  # noqa: BLE001 - each ack's request answers with it (a 5xx for StoreError)
            for a in batch:
                if not a.done.done():
                    a.done.set_exception(e)
            return
        # Nothing else wrote since the last look, and these writes only moved ack fields of hosts
        # already in the store (which compile does not read): the snapshots in hand still answer.
        if before == self.revision and after == before + len(by_host) and all(h in known for h in by_host):
            self.revision = after
        for a in batch:
            if not a.done.done():
                a.done.set_result(None)

    def _remember(self, host: str, snap: Snapshot, now: float) -> None:
        """A new version of a host's snapshot: note when it was made, keep it to diff later ones against."""
        born = self.born.setdefault(host, {})
        born[snap.version] = now
        for v in sorted(born)[:-20]:
            del born[v]
        kept = self.history.setdefault(host, {})
        kept[snap.version] = _Kept(snap)
        for v in sorted(kept)[:-HISTORY]:
            del kept[v]
        deltas = self._deltas.get(host)
        if deltas:
            for key in [k for k in deltas if k[0] not in kept]:
                del deltas[key]

    # --- serving --------------------------------------------------------------------
    def encoded(self, host: str, snap: Snapshot | None = None) -> bytes | None:
        """The host's snapshot (or `snap`, a version of it) as compact JSON, encoded once per version."""
        snap = snap if snap is not None else self.snapshots.get(host)
        if snap is None:
            return None
        hit = self._encoded.get(host)
        if hit is None or hit[0] != snap.version:
            hit = (snap.version, msgspec.json.encode(snap))  # compact: a third of the indented size
            self._encoded[host] = hit
        return hit[1]

    def digest(self, host: str, snap: Snapshot) -> str:
        """snapshot_digest of one of the host's versions, computed once (and mostly from cached services)."""
        kept = self.history.get(host, {}).get(snap.version)
        if kept is None or kept.snap is not snap:
            return snapshot_digest(snap, self._digests)
        if not kept.digest:
            kept.digest = snapshot_digest(snap, self._digests)
        return kept.digest

    def answer(self, host: str, snap: Snapshot, base: int | None = None, base_hash: str = "") -> tuple[str, bytes, str]:
        """(kind, body, digest) for a long-poll that holds version `base` with digest `base_hash`.

        A delta when this replica still has that version and its digest
        matches (so the proxy's copy is the one we would diff against), else
        the full snapshot. Both are encoded once and reused for every poll
        that asks the same question.
        """
        digest = self.digest(host, snap)
        kept = self.history.get(host, {}).get(base) if base is not None else None
        if kept is not None and base is not None and base < snap.version and self.digest(host, kept.snap) == base_hash:
            deltas = self._deltas.setdefault(host, {})
            body = deltas.get((base, snap.version))
            if body is None:
                a, b = kept.snap.services, snap.services
                hit = self._list_diffs.get((id(a), id(b)))
                if hit is None or hit[0] is not a or hit[1] is not b:
                    if len(self._list_diffs) > 64:
                        self._list_diffs.clear()
                    hit = self._list_diffs[(id(a), id(b))] = (a, b, diff_services(a, b))
                body = msgspec.json.encode(make_delta(kept.snap, snap, base_hash, digest, hit[2]))
                deltas[(base, snap.version)] = body
            self.served[KIND_DELTA] += 1
            return KIND_DELTA, body, digest
        body = self.encoded(host, snap)
        assert body is not None
        self.served[KIND_FULL] += 1
        return KIND_FULL, body, digest

    async def wait_snapshot(self, host: str, after: int, wait_s: float) -> Snapshot | None:
        """The host's snapshot once its version is above `after`, or None after wait_s."""
        self.polled[host] = time.time()
        snap = self.snapshots.get(host)
        if snap is not None and after > snap.version:
            # The proxy ran a later version from another replica; we cannot tell whether its
            # content matches ours, so re-stamp ours above it: one redundant reload, never a stale one.
            snap = msgspec.structs.replace(snap, version=max(after + 1, self.revision))
            self.snapshots[host] = snap
            self._remember(host, snap, time.time())
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
                    async with asyncio.timeout(left):  # not wait_for: in 3.11 it can swallow a cancel
                        await self._wake.wait()
