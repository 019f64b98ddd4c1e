"""Where the control plane keeps its state: the interface both stores implement.

Desired state (the operator's mesh config) is a sequence of immutable,
numbered versions, each recorded with who made it, when, the diff and a
content hash, so that any earlier one can be restored. Live state
(instances reported by proxies, what each host runs) is kept with a
lease: a host that stops reporting loses its instances' health after a TTL.

Two implementations: SQLite in one file (one replica) and etcd (several
replicas sharing state). Every method is async so that both fit one shape;
`revision` numbers are store-wide and only grow, and `wait_for_change` lets
a replica notice what another replica wrote.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """The store cannot do what was asked (unreachable, corrupt)."""


class Conflict(StoreError):
    """A compare-and-set lost: someone else changed the state first."""


@dataclass(frozen=True)
class ConfigVersion:
    version: int  # 1, 2, 3, ...: one per applied change
    doc: dict[str, Any]  # the whole desired state, as validated (JSON-able)
    sha256: str  # of the canonical JSON of doc
    author: str  # who applied it (user@host, or "rollback to N by ...")
    at: float  # unix time
    diff: str  # unified diff from the previous version's canonical YAML
    message: str = ""


@dataclass(frozen=True)
class InstanceRecord:
    service: str
    host: str
    address: str  # "ip:port" of the app process
    healthy: bool
    source: str = "proxy"  # proxy | static | dns
    checked_at: float = 0.0
    detail: str = ""  # last health check result, e.g. "connect refused"


RECENT_REJECTS = 10


@dataclass(frozen=True)
class HostRecord:
    name: str
    services: tuple[str, ...]  # services this host may serve (from its join)
    inbound: str = ""  # "ip:port" of its proxy's inbound port
    admin: str = ""
    last_seen: float = 0.0
    snapshot_version: int = 0  # the version it runs (its last accept)
    last_reject: dict[str, Any] = field(default_factory=dict)  # {"version": n, "reason": "...", "at": t}
    rejects: int = 0  # every reject this host's proxy ever sent
    recent_rejects: list[dict[str, Any]] = field(default_factory=list)  # the last RECENT_REJECTS, oldest first
    cert_not_after: float = 0.0  # earliest expiry among its certificates


class Store(abc.ABC):
    """The control plane's whole state. Implementations must be safe for several replicas."""

    # --- desired state ------------------------------------------------------
    @abc.abstractmethod
    async def current(self) -> ConfigVersion | None: ...

    @abc.abstractmethod
    async def commit(self, doc: dict[str, Any], author: str, diff: str, sha256: str,
                     expected_version: int, message: str = "") -> ConfigVersion:
        """Append version expected_version + 1; raise Conflict if current is not expected_version."""

    @abc.abstractmethod
    async def history(self, limit: int = 50) -> list[ConfigVersion]:
        """Newest first."""

    @abc.abstractmethod
    async def get_version(self, version: int) -> ConfigVersion | None: ...

    # --- live state -----------------------------------------------------------
    @abc.abstractmethod
    async def put_instances(self, host: str, instances: list[InstanceRecord], ttl_s: float) -> None:
        """Replace everything `host` reported; it expires after ttl_s unless reported again."""

    @abc.abstractmethod
    async def instances(self) -> list[InstanceRecord]:
        """Live (unexpired) instances of every host; expired ones come back with healthy=False."""

    @abc.abstractmethod
    async def put_host(self, host: HostRecord) -> None: ...

    @abc.abstractmethod
    async def hosts(self) -> list[HostRecord]: ...

    async def host(self, name: str) -> HostRecord | None:
        """One host's record; stores override it so that a per-poll check reads one record, not all."""
        return next((h for h in await self.hosts() if h.name == name), None)

    # --- small keyed records: join tokens, the CA, held changes, drains, replicas ---------
    @abc.abstractmethod
    async def put_record(self, kind: str, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None: ...

    @abc.abstractmethod
    async def create_record(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        """Write the record only if there is none (no TTL); True if this call wrote it.

        Create-only, atomically: of several replicas creating the same record
        at once (each with its own value), exactly one gets True and the
        others then read the winner's value. The shared CA is made this way.
        """

    @abc.abstractmethod
    async def get_record(self, kind: str, key: str) -> dict[str, Any] | None: ...

    @abc.abstractmethod
    async def delete_record(self, kind: str, key: str) -> bool:
        """True if it existed (a single-use join token is consumed exactly once)."""

    @abc.abstractmethod
    async def records(self, kind: str) -> dict[str, dict[str, Any]]: ...

    # --- change feed ------------------------------------------------------------
    @abc.abstractmethod
    async def revision(self) -> int:
        """A store-wide counter that grows with every write."""

    @abc.abstractmethod
    async def wait_for_change(self, after_revision: int, timeout_s: float) -> int:
        """Return the revision once it is above after_revision, or the current one after timeout_s."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    # --- backup and restore (glassmesh.control.backup) -----------------------------
    @abc.abstractmethod
    async def export_state(self) -> dict[str, Any]:
        """The durable state, read at one point in time: {"versions", "hosts", "records"}.

        versions: every ConfigVersion (dataclass fields), oldest first; hosts: every HostRecord; records:
        {kind: {key: value}} of the records without a TTL. Leased state (instances, join tokens, replicas,
        anything with a TTL) is left out: it is live, and it comes back by itself within seconds.
        """

    @abc.abstractmethod
    async def import_state(self, state: dict[str, Any], replace: bool = False) -> None:
        """Write what export_state returned, versions keeping their numbers; replace: clear this store first.

        Not for a store a control plane is running on: restore is an offline step.
        """

    async def is_empty(self) -> bool:
        """No config version, no host, no durable record: nothing a restore would overwrite."""
        state = await self.export_state()
        return not (state["versions"] or state["hosts"] or state["records"])


class StoreTap(Store):
    """A Store that hands every call to another one: subclass it to watch some calls on their way.

    The control plane's metrics use one to count changes its compile loop
    holds back (see metrics.HoldCounter) without the loop knowing about metrics.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def current(self) -> ConfigVersion | None:
        return await self.inner.current()

    async def commit(self, doc: dict[str, Any], author: str, diff: str, sha256: str,
                     expected_version: int, message: str = "") -> ConfigVersion:
        return await self.inner.commit(doc, author, diff, sha256, expected_version, message)

    async def history(self, limit: int = 50) -> list[ConfigVersion]:
        return await self.inner.history(limit)

    async def get_version(self, version: int) -> ConfigVersion | None:
        return await self.inner.get_version(version)

    async def put_instances(self, host: str, instances: list[InstanceRecord], ttl_s: float) -> None:
        await self.inner.put_instances(host, instances, ttl_s)

    async def instances(self) -> list[InstanceRecord]:
        return await self.inner.instances()

    async def put_host(self, host: HostRecord) -> None:
        await self.inner.put_host(host)

    async def hosts(self) -> list[HostRecord]:
        return await self.inner.hosts()

    async def host(self, name: str) -> HostRecord | None:
        return await self.inner.host(name)

    async def put_record(self, kind: str, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        await self.inner.put_record(kind, key, value, ttl_s)

    async def create_record(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        return await self.inner.create_record(kind, key, value)

    async def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        return await self.inner.get_record(kind, key)

    async def delete_record(self, kind: str, key: str) -> bool:
        return await self.inner.delete_record(kind, key)

    async def records(self, kind: str) -> dict[str, dict[str, Any]]:
        return await self.inner.records(kind)

    async def revision(self) -> int:
        return await self.inner.revision()

    async def wait_for_change(self, after_revision: int, timeout_s: float) -> int:
        return await self.inner.wait_for_change(after_revision, timeout_s)

    async def close(self) -> None:
        await self.inner.close()

    async def export_state(self) -> dict[str, Any]:
        return await self.inner.export_state()

    async def import_state(self, state: dict[str, Any], replace: bool = False) -> None:
        await self.inner.import_state(state, replace)
