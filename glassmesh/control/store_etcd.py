"""The Store on an etcd cluster, so that several control-plane replicas share one state.

Key layout under `prefix` (default /glassmesh; every part URL-quoted):

    {p}/config/current            "N": the pointer commit() compares and moves
    {p}/config/v/{N:012d}         one ConfigVersion as JSON, immutable once written
    {p}/live/{host}               the host's last report, on the host's lease
    {p}/reported/{host}           the same report without a lease, so expired
                                  instances can still be shown, as unhealthy
    {p}/hosts/{name}              HostRecord
    {p}/rec/{kind}/{key}          small records; a lease when they have a TTL
                                  (rec/ca/root: the CA every replica signs with)
    {p}/consumed/{kind}/{key}     who deleted a record last (short lease): makes
                                  delete_record's answer exact across retries

Why it is shaped like this:

- Versions are numbered by us, not by etcd revisions, and commit() is one
  txn that compares the pointer to the expected version, then writes the new
  version and the pointer together: two replicas committing at once cannot
  both win, and a half-written commit cannot exist.
- The client retries on another member when one dies, so any write may be
  sent twice. A put of the same value is harmless; a commit or a delete
  carries a nonce, and when its compare fails the store looks for its own
  nonce before it reports Conflict or "did not exist".
- Live state lives on leases, so a host that stops reporting loses its
  instances without any replica having to run a timer; the unleased copy of
  its last report lets instances() return them with healthy=False. A report
  identical to the stored one only renews the lease: no write, no revision,
  no replica woken for nothing.
- revision() is etcd's header revision (cluster-wide, only grows);
  wait_for_change() watches this store's prefix from after_revision + 1, so
  it wakes on our writes (and lease expiries) and not on other users of etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import ssl
import time
import uuid
from typing import Any
from urllib.parse import quote, unquote

from glassmesh.control.etcd_client import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    b64,
    prefix_end,
    unb64,
)
from glassmesh.control.store import (
    ConfigVersion,
    Conflict,
    HostRecord,
    InstanceRecord,
    Store,
    StoreError,
)

__all__ = ["EtcdStore"]

_CONSUMED_TTL_S = 60  # longer than any retry of the delete that wrote it
_NONCE = "_create_nonce"  # in a record made by create_record: which call wrote it


def _q(part: str) -> str:
    return quote(part, safe="")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _lease_ttl(ttl_s: float) -> int:
    """etcd leases count whole seconds; round up so nothing expires early."""
    return max(1, math.ceil(ttl_s))


class EtcdStore(Store):
    """Store over etcd's JSON gateway; `endpoints` are client URLs of the members."""

    def __init__(self, endpoints: list[str], prefix: str = "/glassmesh", *,
                 request_timeout_s: float = 2.0, retry_deadline_s: float = 15.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        urls = [e if "://" in e else f"http://{e}" for e in endpoints]
        self._client = EtcdClient(urls, request_timeout_s, retry_deadline_s, ssl_context=ssl_context)
        self._p = prefix.rstrip("/")

    @classmethod
    def from_url(cls, url: str, prefix: str = "/glassmesh") -> EtcdStore:
        """etcd://h1:2379,h2:2379 (the CLI's --store form) to a store on those members."""
        if not url.startswith("etcd://"):
            raise ValueError(f"not an etcd:// URL: {url}")
        hosts = [h for h in url[len("etcd://"):].strip("/").split(",") if h]
        return cls(hosts, prefix)

    # --- small helpers ---------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return "/".join([self._p, *(_q(p) for p in parts)])

    def _dir(self, *parts: str) -> str:
        return self._k(*parts) + "/"

    async def _call(self, coro: Any) -> Any:
        """Turn the client's failures into the Store's error type."""
        try:
            return await coro
        except EtcdUnavailable as e:
            raise StoreError(f"etcd unavailable: {e}") from e
        except EtcdError as e:
            raise StoreError(str(e)) from e

    async def _get(self, key: str) -> dict[str, Any] | None:
        r = await self._call(self._client.range(key))
        kvs = r.get("kvs") or []
        return kvs[0] if kvs else None

    async def _list(self, directory: str, **opts: Any) -> list[dict[str, Any]]:
        r = await self._call(self._client.range(directory, prefix_end(directory), **opts))
        return r.get("kvs") or []

    @staticmethod
    def _json(kv: dict[str, Any]) -> Any:
        return json.loads(unb64(kv.get("value")))

    # --- desired state -----------------------------------------------------------
    @staticmethod
    def _version_from(data: dict[str, Any]) -> ConfigVersion:
        return ConfigVersion(version=int(data["version"]), doc=data["doc"], sha256=data["sha256"],
                             author=data["author"], at=float(data["at"]), diff=data["diff"],
                             message=data.get("message", ""))

    def _vkey(self, version: int) -> str:
        return self._k("config", "v", f"{version:012d}")

    async def current(self) -> ConfigVersion | None:
        # Versions are only ever appended together with the pointer, so the
        # newest record is the current one: one read instead of two.
        kvs = await self._list(self._dir("config", "v"), sort_order="DESCEND", sort_target="KEY", limit=1)
        return self._version_from(self._json(kvs[0])) if kvs else None

    async def commit(self, doc: dict[str, Any], author: str, diff: str, sha256: str,
                     expected_version: int, message: str = "") -> ConfigVersion:
        new = expected_version + 1
        cv = ConfigVersion(version=new, doc=doc, sha256=sha256, author=author, at=time.time(),
                           diff=diff, message=message)
        nonce = uuid.uuid4().hex
        pointer = self._k("config", "current")
        if expected_version == 0:
            cmp = {"key": b64(pointer), "result": "EQUAL", "target": "VERSION", "version": "0"}
        else:
            cmp = {"key": b64(pointer), "result": "EQUAL", "target": "VALUE", "value": b64(str(expected_version))}
        record = _dumps({**dataclasses.asdict(cv), "nonce": nonce})
        r = await self._call(self._client.txn(
            [cmp],
            [{"request_put": {"key": b64(self._vkey(new)), "value": b64(record)}},
             {"request_put": {"key": b64(pointer), "value": b64(str(new))}}],
            [{"request_range": {"key": b64(pointer)}}]))
        if r.get("succeeded"):
            return cv
        # The compare failed. Either someone else committed first, or our own
        # first attempt went through and only its answer was lost on failover.
        mine = await self._get(self._vkey(new))
        if mine is not None and self._json(mine).get("nonce") == nonce:
            return cv
        cur_kvs = ((r.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
        cur = int(unb64(cur_kvs[0].get("value"))) if cur_kvs else 0
        raise Conflict(f"config is at version {cur}, not {expected_version}")

    async def history(self, limit: int = 50) -> list[ConfigVersion]:
        if limit <= 0:
            return []
        kvs = await self._list(self._dir("config", "v"), sort_order="DESCEND", sort_target="KEY", limit=str(limit))
        return [self._version_from(self._json(kv)) for kv in kvs]

    async def get_version(self, version: int) -> ConfigVersion | None:
        if version < 1:
            return None
        kv = await self._get(self._vkey(version))
        return self._version_from(self._json(kv)) if kv else None

    # --- live state ----------------------------------------------------------------
    async def put_instances(self, host: str, instances: list[InstanceRecord], ttl_s: float) -> None:
        ttl = _lease_ttl(ttl_s)
        reported_key, live_key = self._k("reported", host), self._k("live", host)
        report = [dataclasses.asdict(i) for i in instances]
        for _ in range(20):
            snap = await self._call(self._client.txn([], [
                {"request_range": {"key": b64(reported_key)}}, {"request_range": {"key": b64(live_key)}}]))
            resps = snap.get("responses") or [{}, {}]
            rep_kvs = resps[0].get("response_range", {}).get("kvs") or []
            live_kvs = resps[1].get("response_range", {}).get("kvs") or []
            prev = self._json(rep_kvs[0]) if rep_kvs else None
            # Same report as before, still live: renew the lease and write nothing.
            if (prev is not None and live_kvs and prev.get("instances") == report and prev.get("ttl") == ttl
                    and prev.get("lease")):
                if await self._call(self._client.keepalive(int(prev["lease"]))) > 0:
                    return
            lease = await self._call(self._client.grant(ttl))
            if rep_kvs:
                cmp = {"key": b64(reported_key), "result": "EQUAL", "target": "MOD",
                       "mod_revision": rep_kvs[0]["mod_revision"]}
            else:
                cmp = {"key": b64(reported_key), "result": "EQUAL", "target": "VERSION", "version": "0"}
            value = b64(_dumps({"instances": report, "ttl": ttl, "lease": str(lease), "at": time.time()}))
            try:
                r = await self._call(self._client.txn([cmp], [
                    {"request_put": {"key": b64(live_key), "value": value, "lease": str(lease)}},
                    {"request_put": {"key": b64(reported_key), "value": value}}]))
            except StoreError as e:
                # The lease can only be missing if it expired before we used it
                # (a stalled cluster); start over with a fresh one.
                if isinstance(e.__cause__, EtcdError) and e.__cause__.code == 5:
                    continue
                raise
            if r.get("succeeded"):
                if prev and prev.get("lease") and prev["lease"] != str(lease):
                    # Nothing is attached to the old lease any more; revoking it
                    # now keeps etcd from holding one lease per report.
                    with contextlib.suppress(StoreError):
                        await self._call(self._client.revoke(int(prev["lease"])))
                return
            # Another writer for this host got in between (or our own retried
            # txn did): re-read and try again; the end state is the same.
        raise StoreError(f"put_instances({host}) kept conflicting")

    async def instances(self) -> list[InstanceRecord]:
        live_dir, rep_dir = self._dir("live"), self._dir("reported")
        # One txn of two reads: both at the same revision.
        r = await self._call(self._client.txn([], [
            {"request_range": {"key": b64(live_dir), "range_end": b64(prefix_end(live_dir)), "keys_only": True}},
            {"request_range": {"key": b64(rep_dir), "range_end": b64(prefix_end(rep_dir))}},
        ]))
        resps = r.get("responses") or [{}, {}]
        live_hosts = {unb64(kv["key"]).decode()[len(live_dir):]
                      for kv in resps[0].get("response_range", {}).get("kvs") or []}
        out: list[InstanceRecord] = []
        for kv in resps[1].get("response_range", {}).get("kvs") or []:
            qhost = unb64(kv["key"]).decode()[len(rep_dir):]
            recs = [InstanceRecord(**d) for d in self._json(kv).get("instances", [])]
            if qhost in live_hosts:
                out.extend(recs)
                continue
            # The lease expired: the host stopped reporting.
            # Same words as the SQLite store: the dashboard shows either.
            note = f"no report from {unquote(qhost)} (lease expired)"
            out.extend(dataclasses.replace(i, healthy=False, detail=note) for i in recs)
        out.sort(key=lambda i: (i.service, i.host, i.address))
        return out

    async def put_host(self, host: HostRecord) -> None:
        d = dataclasses.asdict(host)
        d["services"] = list(host.services)
        await self._call(self._client.put(self._k("hosts", host.name), _dumps(d)))

    async def hosts(self) -> list[HostRecord]:
        out = []
        for kv in await self._list(self._dir("hosts")):
            d = self._json(kv)
            d["services"] = tuple(d.get("services", ()))
            out.append(HostRecord(**d))
        return out

    async def host(self, name: str) -> HostRecord | None:
        kv = await self._get(self._k("hosts", name))
        if not kv:
            return None
        d = self._json(kv)
        d["services"] = tuple(d.get("services", ()))
        return HostRecord(**d)

    # --- small keyed records -------------------------------------------------------
    async def put_record(self, kind: str, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        lease = await self._call(self._client.grant(_lease_ttl(ttl_s))) if ttl_s is not None else 0
        # Without a TTL, lease 0 also detaches the key from an earlier lease.
        await self._call(self._client.put(self._k("rec", kind, key), _dumps(value), lease))

    async def create_record(self, kind: str, key: str, value: dict[str, Any]) -> bool:
        """One txn: put only if the key does not exist (etcd version 0), else read what is there.

        The value carries a nonce so that a retry of our own txn (its answer
        lost on failover) finds our write and still says True; the nonce is
        not part of what get_record returns.
        """
        rkey = self._k("rec", kind, key)
        nonce = uuid.uuid4().hex
        r = await self._call(self._client.txn(
            [{"key": b64(rkey), "result": "EQUAL", "target": "VERSION", "version": "0"}],
            [{"request_put": {"key": b64(rkey), "value": b64(_dumps({**value, _NONCE: nonce}))}}],
            [{"request_range": {"key": b64(rkey)}}]))
        if r.get("succeeded"):
            return True
        kvs = ((r.get("responses") or [{}])[0].get("response_range") or {}).get("kvs") or []
        return bool(kvs) and self._json(kvs[0]).get(_NONCE) == nonce

    async def get_record(self, kind: str, key: str) -> dict[str, Any] | None:
        kv = await self._get(self._k("rec", kind, key))
        return self._record(kv) if kv else None

    @classmethod
    def _record(cls, kv: dict[str, Any]) -> dict[str, Any]:
        value: dict[str, Any] = cls._json(kv)
        value.pop(_NONCE, None)
        return value

    async def delete_record(self, kind: str, key: str) -> bool:
        """Exactly one of several concurrent deleters gets True, even across a failover.

        A txn deletes the key only if it is unchanged since we read it, and
        in the same step leaves our nonce under consumed/: a deleter whose
        answer was lost finds its nonce there on the retry.
        """
        rkey, ckey = self._k("rec", kind, key), self._k("consumed", kind, key)
        nonce = uuid.uuid4().hex
        lease = 0
        for _ in range(50):
            r = await self._call(self._client.txn([], [
                {"request_range": {"key": b64(rkey)}}, {"request_range": {"key": b64(ckey)}}]))
            resps = r.get("responses") or [{}, {}]
            kvs = resps[0].get("response_range", {}).get("kvs") or []
            consumed = resps[1].get("response_range", {}).get("kvs") or []
            if consumed and unb64(consumed[0].get("value")).decode() == nonce:
                return True
            if not kvs:
                return False
            if not lease:
                lease = await self._call(self._client.grant(_CONSUMED_TTL_S))
            r = await self._call(self._client.txn(
                [{"key": b64(rkey), "result": "EQUAL", "target": "MOD", "mod_revision": kvs[0]["mod_revision"]}],
                [{"request_delete_range": {"key": b64(rkey)}},
                 {"request_put": {"key": b64(ckey), "value": b64(nonce), "lease": str(lease)}}]))
            if r.get("succeeded"):
                return True
        raise StoreError(f"delete_record({kind}, {key}) kept conflicting")

    async def records(self, kind: str) -> dict[str, dict[str, Any]]:
        d = self._dir("rec", kind)
        return {unquote(unb64(kv["key"]).decode()[len(d):]): self._record(kv) for kv in await self._list(d)}

    # --- change feed -------------------------------------------------------------------
    async def revision(self) -> int:
        r = await self._call(self._client.range(self._k("config", "current"), count_only=True))
        return int(r["header"]["revision"])

    async def wait_for_change(self, after_revision: int, timeout_s: float) -> int:
        """Watch our prefix from after_revision + 1; poll the revision while no watch holds.

        A watch that breaks after it was set up (its member died) is opened
        again at once on the next member from the same revision: etcd replays
        what happened in between, so nothing is missed and nothing wakes us
        for nothing. Only while no member will take a watch is the revision
        polled; that may wake us for a write outside our prefix, which costs
        the caller one needless re-read and nothing else.
        """
        if after_revision < 1:
            # etcd revisions start at 1, and a watch from revision 0 means "from now".
            return await self.revision()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        breaks = failures = 0
        while (remaining := deadline - loop.time()) > 0:
            if self._client.closed:
                raise StoreError("store is closed")
            try:
                async with asyncio.timeout(remaining):
                    return await self._first_change(after_revision + 1)
            except TimeoutError:
                break
            except _WatchBroke:
                breaks += 1
                if breaks <= len(self._client.endpoints):
                    continue  # the client has already moved on to the next member
            except EtcdUnavailable:
                pass
            failures += 1
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    rev = await self.revision()
                if rev > after_revision:
                    return rev
            except (TimeoutError, StoreError):
                pass
            await asyncio.sleep(min(0.05 * failures, 0.3, max(0.0, deadline - loop.time())))
        return await self.revision()

    async def _first_change(self, start: int) -> int:
        """The revision of the first event at or after `start` under our prefix."""
        p = self._p + "/"
        created = False
        try:
            async for res in self._client.watch(p, prefix_end(p), start):
                if res.get("canceled"):
                    # Typically compacted past `start`: what changed is unknown,
                    # so let the caller poll the revision and re-read everything.
                    raise EtcdUnavailable(f"watch canceled: {res.get('cancel_reason') or 'compacted'}")
                created = created or bool(res.get("created"))
                if res.get("events"):
                    # The header revision, not the events': it covers every
                    # event sent with it, and it is what revision() says, so a
                    # caller that compares the two does not recompute twice.
                    return int(res["header"]["revision"])
        except EtcdUnavailable as e:
            if created and not isinstance(e, _WatchBroke):
                raise _WatchBroke(str(e)) from e
            raise
        raise _WatchBroke("watch ended") if created else EtcdUnavailable("watch ended")

    # --- lifecycle -------------------------------------------------------------------
    async def export_state(self) -> dict[str, Any]:
        # One range over the whole prefix: etcd answers it at one revision, so it is one point in time.
        top = self._p + "/"
        versions, hosts, records = [], [], {}
        for kv in await self._list(top):
            if int(kv.get("lease", 0) or 0):
                continue  # live state (instances, tokens, replicas): it comes back by itself
            parts = [unquote(p) for p in unb64(kv["key"]).decode()[len(top):].split("/")]
            if parts[:2] == ["config", "v"] and len(parts) == 3:
                v = self._json(kv)
                v.pop("nonce", None)
                versions.append(v)
            elif parts[0] == "hosts" and len(parts) == 2:
                hosts.append(self._json(kv))
            elif parts[0] == "rec" and len(parts) == 3:
                records.setdefault(parts[1], {})[parts[2]] = self._record(kv)
        versions.sort(key=lambda v: int(v["version"]))
        return {"versions": versions, "hosts": hosts, "records": records}

    async def import_state(self, state: dict[str, Any], replace: bool = False) -> None:
        if replace:
            top = self._p + "/"
            await self._call(self._client.call("kv/deleterange", {"key": b64(top), "range_end": b64(prefix_end(top))}))
        for kind, recs in state["records"].items():
            for key, value in recs.items():
                await self._call(self._client.put(self._k("rec", kind, key), _dumps(value)))
        for h in state["hosts"]:
            await self._call(self._client.put(self._k("hosts", h["name"]), _dumps(h)))
        for v in state["versions"]:
            await self._call(self._client.put(self._vkey(int(v["version"])), _dumps(v)))
        if state["versions"]:  # the pointer last: a half-done restore has no current version past what it wrote
            await self._call(self._client.put(self._k("config", "current"), str(state["versions"][-1]["version"])))

    async def close(self) -> None:
        """Close every open watch stream and connection; waiting calls end with StoreError."""
        await self._client.close()


class _WatchBroke(EtcdUnavailable):
    """A watch that was set up has ended: re-watch elsewhere, no need to poll yet."""
