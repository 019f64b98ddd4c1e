"""What the operator's API does, without HTTP: apply, rollback, release, drain, status.

Kept apart from the aiohttp handlers so that each operation can be tested
against a store directly, and so the next transport (mTLS, the dashboard)
reuses them unchanged.
"""

from __future__ import annotations

import time
from typing import Any

from glassmesh.control.compile import compile_snapshots
from glassmesh.control.config import (
    ConfigError,
    Problem,
    diff_docs,
    from_doc,
    parse_config,
    sha256_of,
    to_doc,
)
from glassmesh.control.metrics import holds_started
from glassmesh.control.plane import Plane
from glassmesh.control.store import ConfigVersion, Conflict, Store
from glassmesh.control.yamlpos import compose, line_of
from glassmesh.model.snapshot import SnapshotError, check_snapshot


class NotFound(LookupError):
    """The thing asked for (a version, a held change) does not exist."""


def _name(v: ConfigVersion | None) -> str:
    return f"version {v.version}" if v else "empty"


async def _check_compiles(store: Store, cfg: Any, text: str, filename: str, trust_domain: str) -> None:
    """Compile every host's snapshot and run the proxy's own checks, so apply never ships one it would refuse."""
    snaps = compile_snapshots(cfg, await store.instances(), await store.hosts(), trust_domain=trust_domain,
                              versions={})
    root = compose(text)
    problems = []
    checked: set[int] = set()
    for i, h in enumerate(cfg.hosts):
        try:
            check_snapshot(snaps[h.name], checked)
        except SnapshotError as e:
            problems.append(Problem(line_of(root, f"hosts[{i}]"), f"hosts[{i}]", f"its snapshot would be refused: {e}"))
    if problems:
        raise ConfigError(filename, problems)


async def commit_doc(store: Store, doc: dict[str, Any], author: str, *, dry_run: bool = False,
                     expected_version: int | None = None, message: str = "") -> dict[str, Any]:
    """Diff doc against the current version and commit it as the next one (compare-and-set)."""
    cur = await store.current()
    at = cur.version if cur else 0
    if expected_version is not None and expected_version != at:
        raise Conflict(f"the config is at version {at}, not {expected_version}")
    sha = sha256_of(doc)
    diff = diff_docs(cur.doc if cur else None, doc, _name(cur), "new")
    if dry_run or (cur is not None and cur.sha256 == sha):
        return {"version": at, "diff": diff, "sha256": sha, "changed": bool(diff), "committed": False}
    new = await store.commit(doc, author, diff, sha, expected_version=at, message=message)
    return {"version": new.version, "diff": diff, "sha256": sha, "changed": True, "committed": True}


async def apply(store: Store, text: str, author: str, *, filename: str = "mesh.yaml", dry_run: bool = False,
                expected_version: int | None = None, trust_domain: str = "glassmesh.local") -> dict[str, Any]:
    """Validate mesh.yaml text (ConfigError with lines and fields), then commit it."""
    cfg = parse_config(text, filename)
    await _check_compiles(store, cfg, text, filename, trust_domain)
    return await commit_doc(store, to_doc(cfg), author, dry_run=dry_run, expected_version=expected_version)


async def rollback(store: Store, version: int, author: str) -> dict[str, Any]:
    """Restore an earlier version's document as a new version (history is never rewritten)."""
    old = await store.get_version(version)
    if old is None:
        raise NotFound(f"there is no config version {version}")
    from_doc(old.doc)  # still readable by this code?
    return await commit_doc(store, old.doc, f"{author} (rollback to {version})", message=f"rollback to version {version}")


async def release(store: Store, service: str) -> dict[str, Any]:
    """Let a held change through: what it wanted becomes what was pushed, so the guard passes it."""
    held = await store.get_record("held", service)
    if held is None:
        raise NotFound(f"no change to {service!r} is held")
    await store.put_record("pushed", service, {"endpoints": held["new"]})
    await store.delete_record("held", service)
    return {"service": service, "released": True, "endpoints": len(held["new"])}


async def drain(store: Store, service: str, author: str, undo: bool = False) -> dict[str, Any]:
    """Mark a service as emptied on purpose (its endpoints may go to none), or clear the mark."""
    if undo:
        return {"service": service, "drained": False, "existed": await store.delete_record("drained", service)}
    await store.put_record("drained", service, {"by": author, "at": time.time()})
    await store.delete_record("held", service)
    return {"service": service, "drained": True}


def version_json(v: ConfigVersion, with_doc: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"version": v.version, "sha256": v.sha256, "author": v.author, "at": v.at,
                           "diff": v.diff, "message": v.message}
    if with_doc:
        out["doc"] = v.doc
    return out


def _reject(rej: dict[str, Any], running: int) -> dict[str, Any]:
    """A reject, marked `past` once the host runs that version or a newer one (e.g. after the restart the
    reject asked for): it was dealt with since, and is no problem now."""
    return {**rej, "past": running >= int(rej.get("version", 0))}


async def status(store: Store, plane: Plane, replica_id: str) -> dict[str, Any]:
    """Everything `glassmesh status` shows, from the store plus this replica's memory."""
    now = time.time()
    records = await store.hosts()
    by_name = {h.name: h for h in records}
    builds = await store.records("build")
    hosts = []
    for name, snap in sorted(plane.snapshots.items()):
        rec = by_name.get(name)
        running = rec.snapshot_version if rec else 0
        born = plane.born.get(name, {})
        seen = max(rec.last_seen if rec else 0.0, plane.polled.get(name, 0.0))
        hosts.append({
            "name": name, "running": running, "latest": snap.version, "in_sync": running >= snap.version,
            "snapshot_age_s": round(now - born[running], 1) if running in born else None,
            "behind_s": 0.0 if running >= snap.version else round(now - born.get(snap.version, now), 1),
            "last_seen_s": round(now - seen, 1) if seen else None,
            "last_reject": _reject(rec.last_reject, running) if rec and rec.last_reject else None,
            "rejects": rec.rejects if rec else 0,
            "recent_rejects": [_reject(r, running) for r in rec.recent_rejects] if rec else [],
            "insecure": name in plane.insecure,  # its proxy talks plain HTTP (--insecure-proxy-listen)
            # Its proxy's build and wire version, and the features its snapshot requires that it lacks.
            "proxy": plane.proxies.get(name),
            "lacks": [f for f in snap.requires if name in plane.proxies
                      and f not in plane.proxies[name]["features"]],
            # Its proxy's request path: "mypyc" (compiled), "python", "mixed" or "stale"; None: not said yet.
            "hot_path": builds.get(name, {}).get("hot_path"),
        })
    expiries = [h.cert_not_after for h in records if h.cert_not_after > 0]
    earliest = min(expiries) if expiries else None
    return {
        "replica": replica_id,
        "replicas": [dict(v, id=k) for k, v in (await store.records("replica")).items()],
        "revision": await store.revision(),
        "config_version": plane.config_version,
        "compile_error": plane.last_error or None,
        "hosts": hosts,
        "held": [dict(v, since_s=round(now - v.get("since", now), 1)) for v in (await store.records("held")).values()],
        # Changes this replica's compile loop held back since it started, per service (a metrics counter).
        "holds_started": holds_started(plane.store),
        "drained": sorted(await store.records("drained")),
        "unhealthy": [{"service": i.service, "host": i.host, "address": i.address, "detail": i.detail}
                      for i in await store.instances() if not i.healthy],
        "outage_budget": {"earliest_cert_expiry": earliest,
                          "seconds": None if earliest is None else round(earliest - now),
                          "text": "unknown" if earliest is None else f"{max(0, earliest - now) / 3600:.1f} h"},
    }
