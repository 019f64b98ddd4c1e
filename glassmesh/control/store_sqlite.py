"""The Store in one SQLite file: the default, for a single control-plane replica.

One connection in WAL mode; each write is one transaction that also bumps the
store-wide revision, so a reader never sees half a change. The calls block,
but each is a few hundred microseconds on a local file, far cheaper than a
thread hop, so they run on the event loop.

Leases (instances, records with a TTL) expire by the clock, with no write.
So that the change feed still notices, `wait_for_change` wakes at the next
expiry, and a sweep marks what expired and bumps the revision: every replica
of the compile loop then sees the instance go unhealthy like any other change.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from typing import Any

from glassmesh.control.store import ConfigVersion, Conflict, HostRecord, InstanceRecord, Store, StoreError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0);
CREATE TABLE IF NOT EXISTS versions (version INTEGER PRIMARY KEY, doc TEXT NOT NULL, sha256 TEXT NOT NULL,
    author TEXT NOT NULL, at REAL NOT NULL, diff TEXT NOT NULL, message TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (host TEXT NOT NULL, service TEXT NOT NULL, address TEXT NOT NULL,
    healthy INTEGER NOT NULL, source TEXT NOT NULL, checked_at REAL NOT NULL, detail TEXT NOT NULL,
    expires_at REAL NOT NULL, expired INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (host, service, address));
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    expires_at REAL, PRIMARY KEY (kind, key));
"""


def _private_files(path: str) -> None:
    """The store holds the CA key and join-token hashes: the file and its WAL and shm are 0600.

    SQLite creates -wal and -shm with the database file's mode, so creating
    the file 0600 before SQLite opens it covers all three; files an older
    version left wider are narrowed.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            if stat.S_IMODE(os.stat(p).st_mode) & 0o077:
                os.chmod(p, 0o600)


def _version(row: tuple[Any, ...]) -> ConfigVersion:
    return ConfigVersion(version=row[0], doc=json.loads(row[1]), sha256=row[2], author=row[3], at=row[4],
                         diff=row[5], message=row[6])


class SqliteStore(Store):
    """State in one SQLite file; safe for one replica (and any number of readers of the file)."""

    def __init__(self, path: str, clock: Any = time.time) -> None:
        self._clock = clock
        try:
            _private_files(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"cannot open {path}: {e}") from None
        self._changed: asyncio.Condition | None = None

    # --- plumbing -----------------------------------------------------------------
    def _cond(self) -> asyncio.Condition:
        if self._changed is None:  # created on first use, inside the running loop
            self._changed = asyncio.Condition()
        return self._changed

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error; sqlite's errors surface as StoreError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"sqlite: {e}") from None

    def _write(self, *stmts: tuple[str, tuple[Any, ...]]) -> int:
        """Run statements in one transaction that also bumps the revision; return the new revision."""
        with self._transaction():
            for sql, args in stmts:
                self._db.execute(sql, args)
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        return self._rev()

    def _rev(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    async def _notify(self) -> None:
        cond = self._cond()
        async with cond:
            cond.notify_all()

    def _sweep(self) -> bool:
        """Mark expired leases and drop expired records, as one write; True if anything expired."""
        now = self._clock()
        n1 = self._db.execute("SELECT count(*) FROM instances WHERE expired = 0 AND expires_at <= ?",
                              (now,)).fetchone()[0]
        n2 = self._db.execute("SELECT count(*) FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?",
                              (now,)).fetchone()[0]
        if not (n1 or n2):
            return False
        self._write(("UPDATE instances SET expired = 1 WHERE expired = 0 AND expires_at <= ?", (now,)),
                    ("DELETE FROM records WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)))
        return True

    def _next_expiry(self) -> float | None:
        row = self._db.execute(
            "SELECT min(t) FROM (SELECT min(expires_at) AS t FROM instances WHERE expired = 0 "
            "UNION ALL SELECT min(expires_at) FROM records WHERE expires_at IS NOT NULL)").fetchone()
        return row[0]

    # --- desired state ------------------------------------------------------------
    async def current(self) -> ConfigVersion | None:
        row = self._db.execute("SELECT * FROM versions ORDER BY version DESC LIMIT 1").fetchone()
        return _version(row) if row else None

    async def commit(self, doc: dict[str, Any], author: str, diff: str, sha256: str,
                     expected_version: int, message: str = "") -> ConfigVersion:
        at = self._clock()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("SELECT coalesce(max(version), 0) FROM versions").fetchone()[0]
            if cur != expected_version:
                self._db.execute("ROLLBACK")
                raise Conflict(f"the config is at version {cur}, not {expected_version}")
            self._db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (cur + 1, json.dumps(doc, sort_keys=True), sha256, author, at, diff, message))
            self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
            self._db.execute("COMMIT")
        except sqlite3.Error as e:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(f"sqlite: {e}") from None
        await self._notify()
        return ConfigVersion(cur + 1, doc, sha256, author, at, diff, message)

    async def history(self, limit: int = 50) -> list[ConfigVersion]:
        rows = self._db.execute("SELECT * FROM versions ORDER BY version DESC LIMIT ?", (limit,)).fetchall()
        return [_version(r) for r in rows]

    async def get_version(self, version: int) -> ConfigVersion | None:
        row = self._db.execute("SELECT * FROM versions WHERE version = ?", (version,)).fetchone()
        return _version(row) if row else None

    # --- live state -----------------------------------------------------------------
    async def put_instances(self, host: str, instances: list[InstanceRecord], ttl_s: float) -> None:
        exp = self._clock() + ttl_s
        stmts: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM instances WHERE host = ?", (host,))]
        for i in instances:
            stmts.append(("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                          (host, i.service, i.address, int(i.healthy), i.source, i.checked_at, i.detail, exp)))
        self._write(*stmts)
        await self._notify()

    async def instances(self) -> list[InstanceRecord]:
        now = self._clock()
        out = []
        for h, s, a, ok, src, at, detail, exp, _ in self._db.execute(
                "SELECT * FROM instances ORDER BY service, host, address"):
            if exp <= now:
                out.append(InstanceRecord(s, h, a, False, src, at, f"no report from {h} (lease expired)"))
            else:
                out.append(InstanceRecord(s, h, a, bool(ok), src, at, detail))
        return out

    async def put_host(self, host: HostRecord) -> None:
        data = dict(host.__dict__, services=list(host.services))
        self._write(("INSERT OR REPLACE INTO hosts VALUES (?, ?)", (host.name, json.dumps(data))))
        await self._notify()

    async def hosts(self) -> list[HostRecord]:
        out = []
        for (data,) in self._db.execute("SELECT data FROM hosts ORDER BY name"):
            d = json.loads(data)
            out.append(HostRecord(**dict(d, services=tuple(d["services"]))))
        return out

    async def host(self, name: str) -> HostRecord | None:
        row = self._db.execute("SELECT data FROM hosts WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        d = json.loads(row[0])
        return HostRecord(**dict(d, services=tuple(d["services"])))

    # --- records ----------------------------------------------------------------------
    async def put_record(self, kind: str, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        exp = None if ttl_s is None else self._clock() + ttl_s
        self._write(("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", (kind, key, json.dumps(value), exp)))
        await self._notify()

    async def create_record(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        # One transaction: an expired record (not swept yet) counts as absent, a live one wins.
        with self._transaction():
            self._db.execute("DELETE FROM records WHERE kind = ? AND key = ? AND expires_at IS NOT NULL "
                             "AND expires_at <= ?", (kind, key, self._clock()))
            cur = self._db.execute("INSERT OR IGNORE INTO records VALUES (?, ?, ?, NULL)",
                                   (kind, key, json.dumps(value)))
            created = cur.rowcount == 1
            if created:
                self._db.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        if created:
            await self._notify()
        return created

    async def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT value FROM records WHERE kind = ? AND key = ? AND "
                               "(expires_at IS NULL OR expires_at > ?)", (kind, key, self._clock())).fetchone()
        return json.loads(row[0]) if row else None

    async def delete_record(self, kind: str, key: str) -> bool:
        if await self.get_record(kind, key) is None:
            return False
        self._write(("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key)))
        await self._notify()
        return True

    async def records(self, kind: str) -> dict[str, dict[str, Any]]:
        rows = self._db.execute("SELECT key, value FROM records WHERE kind = ? AND "
                                "(expires_at IS NULL OR expires_at > ?) ORDER BY key", (kind, self._clock()))
        return {k: json.loads(v) for k, v in rows}

    # --- change feed ------------------------------------------------------------------------
    async def revision(self) -> int:
        return self._rev()

    async def wait_for_change(self, after_revision: int, timeout_s: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        cond = self._cond()
        while True:
            if self._sweep():
                await self._notify()
            rev = self._rev()
            left = deadline - loop.time()
            if rev > after_revision or left <= 0:
                return rev
            nxt = self._next_expiry()
            if nxt is not None:
                left = min(left, max(0.0, nxt - self._clock()) + 0.01)
            async with cond:
                if self._rev() > after_revision:
                    continue
                try:
                    async with asyncio.timeout(left):  # not wait_for: in 3.11 it can swallow a cancel
                        await cond.wait()
                except TimeoutError:
                    pass

    async def export_state(self) -> dict[str, Any]:
        try:
            self._db.execute("BEGIN")  # one read transaction: one point in time, while a control plane writes
            try:
                versions = [dataclasses.asdict(_version(r))
                            for r in self._db.execute("SELECT * FROM versions ORDER BY version")]
                hosts = [json.loads(d) for (d,) in self._db.execute("SELECT data FROM hosts ORDER BY name")]
                records: dict[str, dict[str, Any]] = {}
                for kind, key, value in self._db.execute(
                        "SELECT kind, key, value FROM records WHERE expires_at IS NULL ORDER BY kind, key"):
                    records.setdefault(kind, {})[key] = json.loads(value)
            finally:
                self._db.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"sqlite: {e}") from None
        return {"versions": versions, "hosts": hosts, "records": records}

    async def import_state(self, state: dict[str, Any], replace: bool = False) -> None:
        stmts: list[tuple[str, tuple[Any, ...]]] = []
        if replace:
            stmts += [(f"DELETE FROM {t}", ()) for t in ("versions", "hosts", "records", "instances")]
        for v in state["versions"]:
            stmts.append(("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (v["version"], json.dumps(v["doc"]), v["sha256"], v["author"], v["at"], v["diff"],
                           v.get("message", ""))))
        for h in state["hosts"]:
            stmts.append(("INSERT OR REPLACE INTO hosts VALUES (?, ?)", (h["name"], json.dumps(h))))
        for kind, recs in state["records"].items():
            for key, value in recs.items():
                stmts.append(("INSERT OR REPLACE INTO records VALUES (?, ?, ?, NULL)", (kind, key, json.dumps(value))))
        self._write(*stmts)

    async def close(self) -> None:
        self._db.close()
