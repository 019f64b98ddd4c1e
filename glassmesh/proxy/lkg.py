"""The last-known-good snapshot on disk: what a proxy restarted during a control-plane outage serves.

Written only after the proxy accepted a snapshot, and atomically (temp file
in the same directory, fsync, rename, fsync of the directory), so that a
crash or power cut mid-write leaves either the old file or the new one,
never half of one: a torn LKG would turn a control-plane outage into a
data-plane outage at the next restart.

Paths inside the file are written relative to the data directory when they
lie under it, so the directory can be moved or restored from a backup.
"""

from __future__ import annotations

import os

import msgspec

from glassmesh.files import write_private
from glassmesh.model.snapshot import Snapshot, SnapshotError, encode_snapshot, load_snapshot

FILENAME = "snapshot.json"


def lkg_path(data_dir: str) -> str:
    return os.path.join(data_dir, FILENAME)


def _relative(snap: Snapshot, base: str) -> Snapshot:
    """File paths under `base` made relative to it (the inverse of parse_snapshot's resolution)."""
    base = os.path.abspath(base)

    def rel(path: str) -> str:
        if os.path.isabs(path) and os.path.commonpath([base, path]) == base:
            return os.path.relpath(path, base)
        return path

    return msgspec.structs.replace(
        snap,
        trust_bundle=rel(snap.trust_bundle),
        local_services=[msgspec.structs.replace(s, cert=rel(s.cert), key=rel(s.key)) for s in snap.local_services],
    )


def as_sent(data_dir: str, snap: Snapshot) -> Snapshot:
    """The last-known-good snapshot in the form the control plane sent it (paths as it wrote them).

    A proxy restarted from disk offers this as the base for the next delta.
    It is only a candidate: when the proxy's guard changed the snapshot
    before it was saved, or paths were written otherwise, its digest differs
    from the control plane's and the control plane sends the full snapshot.
    """
    return _relative(snap, data_dir)


def save(data_dir: str, snap: Snapshot) -> None:
    """Record an accepted snapshot (as it is in force, guard included) as the last-known-good one."""
    write_private(lkg_path(data_dir), encode_snapshot(_relative(snap, data_dir)) + b"\n")  # the topology: 0600


def load(data_dir: str) -> Snapshot | None:
    """The last-known-good snapshot, or None when there is none; raises SnapshotError when it is unusable."""
    path = lkg_path(data_dir)
    if not os.path.exists(path):
        return None
    return load_snapshot(path, strict=False)  # written by this proxy, maybe by a newer release before a rollback


__all__ = ["FILENAME", "SnapshotError", "as_sent", "load", "lkg_path", "save"]
