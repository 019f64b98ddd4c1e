"""The proxy-facing control-plane API as the proxy speaks it: paths, headers and JSON bodies.

    GET  /v1/hosts/{host}/snapshot?after=N&wait=S[&base=V&hash=H]
         -> 200 snapshot JSON (KIND_HEADER full) or SnapshotDelta JSON (KIND_HEADER delta), or 204
    POST /v1/hosts/{host}/ack        Ack
    POST /v1/hosts/{host}/instances  Report

Deltas. A proxy that holds version V whose content digest is H
(model.snapshot.snapshot_digest of the snapshot as it came over the wire)
adds `base=V&hash=H` to its long-poll. When the control plane still has
version V of that host and its digest is H, it answers with a SnapshotDelta:
the services added or changed (whole), the names removed, and the top-level
fields that changed, plus the digest of the result. The proxy rebuilds the
new snapshot from its base (apply_delta), checks the digest, validates the
result as it would a full snapshot, and on any mismatch asks again without
`base`, which always gets the full snapshot. A control plane or proxy that
knows nothing of deltas simply never sends them or never asks for them.

Wire versions: the rule for a fleet that runs two releases at once.

Every request a proxy makes carries WIRE_HEADER (the wire protocol version
it speaks, WIRE, which is not the package version) and BUILD_HEADER (its
package version); every snapshot answer carries the control plane's
WIRE_HEADER. A message without one comes from a release before this rule
(wire 0). The rule:

1. Two sides whose wire versions are at most one apart work together,
   whichever is newer: that is what a rolling upgrade needs. Further apart,
   the reader refuses with a reason naming both versions (the proxy rejects
   the snapshot and keeps the one in force; the control plane answers 426)
   instead of guessing.
2. A wire version grows only by adding: a new optional field (with a
   default that means "as before"), a new header, a new endpoint. Never a
   renamed field or a changed meaning; that would be a new major wire, a new
   path (/v2/...).
3. Between glassmesh processes, fields a reader does not know are ignored
   (Ack, Report, snapshot, delta: these structs do not forbid unknown
   fields). A proxy notices by the digest: what it decoded hashes
   differently from what the control plane hashed, so it names the fields it
   ignored once at debug level and takes full snapshots only (deltas could
   not be verified) until both sides agree again. Never a desync: a delta
   that does not rebuild the control plane's digest is asked again in full.
4. What an older proxy must not ignore is marked must-understand: the
   snapshot's `requires` lists features (model.snapshot.FEATURES); a proxy
   lacking one rejects the snapshot with a reason naming it, keeps its
   last-known-good one, and acks the reject; the control plane shows it in
   `glassmesh status`, beside each proxy's build and wire version, which it
   learns from these headers (FEATURES_HEADER: the proxy's features).
5. What a user writes (mesh.yaml, a snapshot file given with --config, the
   operator API) stays strict: an unknown field there is a typo, an error.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import quote

import msgspec
from msgspec import UNSET, UnsetType

from glassmesh import __version__
from glassmesh.model.snapshot import (
    Address,
    DigestCache,
    Limits,
    LocalService,
    Name,
    Service,
    Snapshot,
    TcpLink,
    Timeouts,
    snapshot_digest,
)

VERSION_HEADER = "glassmesh-snapshot-version"
KIND_HEADER = "glassmesh-snapshot-kind"  # "full" or "delta"; absent (an older control plane): full
HASH_HEADER = "glassmesh-snapshot-hash"  # snapshot_digest of the version answered (the delta's result)
KIND_FULL, KIND_DELTA = "full", "delta"
WIRE_HEADER = "glassmesh-wire"  # the wire version of the sender (see the rule above); absent: 0
BUILD_HEADER = "glassmesh-build"  # the proxy's package version, for `glassmesh status`
FEATURES_HEADER = "glassmesh-features"  # the proxy's must-understand features, comma-separated
# The sender's clock (Unix seconds) as it sent the request: the control plane keeps how far each proxy's
# clock is from its own, for `glassmesh check` (certificates, expiry and logs need clocks in step).
TIME_HEADER = "glassmesh-time"
WIRE = 1  # this build's wire version: 1 is the first with the rule above
_S = {"kw_only": True}  # no forbid_unknown_fields: a newer peer's fields are ignored (rule 3)


def wire_of(header: str | None) -> int:
    """The peer's wire version from WIRE_HEADER: absent (a release before the rule) is 0, garbage is -1."""
    if header is None:
        return 0
    return int(header) if header.isdigit() and len(header) < 6 else -1


def clock_of(header: str | None) -> float | None:
    """The sender's clock from TIME_HEADER; None when absent (an older proxy) or not a plain number."""
    if not header or len(header) > 32:
        return None
    try:
        t = float(header)
    except ValueError:
        return None
    return t if 0 < t < 1e11 else None  # also refuses nan and inf


def wire_mismatch(peer: int, who: str) -> str:
    """Why a peer at wire `peer` cannot be served (rule 1), or "" when it can."""
    if abs(peer - WIRE) <= 1:
        return ""
    return (f"{who} speaks wire version {peer}, this {'proxy' if who.startswith('control') else 'control plane'} "
            f"wire {WIRE} (glassmesh {__version__}): more than one release apart; upgrade the older side")


class Ack(msgspec.Struct, **_S):
    """A proxy's answer to one snapshot version: accepted (maybe with a warning in reason) or rejected."""

    version: int
    accepted: bool
    reason: str = ""
    # The proxy's build of the request path (buildinfo.hot_path_doc: "mypyc", "python", "mixed" or "stale"),
    # for `glassmesh status`; "" from a proxy that does not say. One short word: it is stored per host.
    hot_path: Annotated[str, msgspec.Meta(max_length=32, pattern=r"^[a-z]*$")] = ""


class Reported(msgspec.Struct, **_S):
    """One local instance and the result of the proxy's own health check of it."""

    service: str
    address: Address
    healthy: bool
    detail: str = ""


class Report(msgspec.Struct, **_S):
    """Every instance a proxy fronts; the control plane expires them after ttl_s without a new report."""

    instances: list[Reported]
    ttl_s: float = 15.0


def snapshot_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/snapshot"


def ack_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/ack"


def instances_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/instances"


# --------------------------------------------------------------------------- deltas

# The Snapshot fields a delta carries only when they changed: all but version, host and services.
HEAD_FIELDS: tuple[str, ...] = tuple(f for f in Snapshot.__struct_fields__ if f not in ("version", "host", "services"))


class DeltaMismatch(Exception):
    """A delta that does not fit the snapshot held (another base, or a result with another digest).

    Not a reject: the proxy asks for the full snapshot instead and judges that.
    """


class SnapshotDelta(msgspec.Struct, **_S, frozen=True):
    """What changed from one version of a host's snapshot to another; see the module docstring.

    The top-level fields have the same types (and so the same checks) as in
    Snapshot, and are UNSET (left out of the JSON) when unchanged. Services
    are sorted by name in the result unless `order` gives their order.
    """

    version: Annotated[int, msgspec.Meta(ge=0)]
    host: Name
    base_version: Annotated[int, msgspec.Meta(ge=0)]
    base_hash: str
    hash: str  # snapshot_digest of the result
    services: list[Service] = []  # added or changed, whole
    removed: list[Name] = []
    order: list[Name] | UnsetType = UNSET
    trust_domain: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9.-]+$")] | UnsetType = UNSET
    trust_bundle: str | UnsetType = UNSET
    peer_protocol: Literal["mux", "http1"] | UnsetType = UNSET
    inbound: Address | UnsetType = UNSET
    admin: Address | UnsetType = UNSET
    local_services: list[LocalService] | UnsetType = UNSET
    tcp_links: list[TcpLink] | UnsetType = UNSET
    withheld_services: list[Name] | UnsetType = UNSET
    timeouts: Timeouts | UnsetType = UNSET
    limits: Limits | UnsetType = UNSET
    requires: list[str] | UnsetType = UNSET


_delta_decoder = msgspec.json.Decoder(SnapshotDelta)


ServicesDiff = tuple[list[Service], list[str], "list[str] | UnsetType"]  # changed, removed, order


def diff_services(base: list[Service], new: list[Service]) -> ServicesDiff:
    """(added or changed, names removed, order or UNSET when sorted by name) from one services list to another.

    Services are compared by identity first (the control plane shares
    unchanged Service objects between versions), by value only when the
    objects differ, so a change costs about one dict lookup per service.
    """
    old = {s.name: s for s in base}
    changed = [s for s in new if (o := old.get(s.name)) is None or (o is not s and o != s)]
    names = [s.name for s in new]
    kept = set(names)
    order: list[str] | UnsetType = UNSET if all(a < b for a, b in zip(names, names[1:], strict=False)) else names
    return changed, [n for n in old if n not in kept], order


def make_delta(base: Snapshot, new: Snapshot, base_hash: str, new_hash: str,
               services: ServicesDiff | None = None) -> SnapshotDelta:
    """The delta that turns `base` into `new` (both as compiled, paths unresolved).

    services: diff_services(base.services, new.services) when the caller has
    it already (hosts that share their services lists share this too).
    """
    changed, removed, order = services if services is not None else diff_services(base.services, new.services)
    heads = {f: getattr(new, f) for f in HEAD_FIELDS if getattr(new, f) != getattr(base, f)}
    return SnapshotDelta(
        version=new.version, host=new.host, base_version=base.version, base_hash=base_hash, hash=new_hash,
        services=changed, removed=removed, order=order, **heads,
    )


def decode_delta(body: bytes) -> SnapshotDelta:
    """Decode a delta (unknown fields ignored, rule 3); a malformed one is a DeltaMismatch (ask for the full snapshot), not a reject."""
    try:
        return _delta_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise DeltaMismatch(f"unreadable delta: {e}") from None


def apply_delta(base: Snapshot, base_hash: str, delta: SnapshotDelta, cache: DigestCache | None = None) -> Snapshot:
    """The snapshot `delta` describes, built on `base` (wire form); DeltaMismatch unless its digest is delta.hash.

    Unchanged services are base's own objects, changed ones were decoded with
    the Snapshot schema's types, and the digest check proves the whole result
    equals what the control plane compiled. The caller still runs the meaning
    checks (model.snapshot.check_snapshot) as for a full snapshot.
    """
    if delta.host != base.host:
        raise DeltaMismatch(f"delta is for host {delta.host!r}, the base snapshot for {base.host!r}")
    if delta.base_version != base.version or delta.base_hash != base_hash:
        raise DeltaMismatch(f"delta applies to version {delta.base_version} ({delta.base_hash[:12]}), "
                            f"this proxy holds version {base.version} ({base_hash[:12]})")
    by_name = {s.name: s for s in base.services}
    for name in delta.removed:
        if by_name.pop(name, None) is None:
            raise DeltaMismatch(f"delta removes service {name!r}, which the base does not have")
    for svc in delta.services:
        by_name[svc.name] = svc
    if isinstance(delta.order, UnsetType):
        names = sorted(by_name)
    else:
        names = delta.order
        if len(names) != len(by_name) or set(names) != set(by_name):
            raise DeltaMismatch("delta's service order does not name the services it leaves")
    heads = {f: v for f in HEAD_FIELDS if not isinstance(v := getattr(delta, f), UnsetType)}
    snap = msgspec.structs.replace(base, version=delta.version, services=[by_name[n] for n in names], **heads)
    got = snapshot_digest(snap, cache)
    if got != delta.hash:
        raise DeltaMismatch(f"version {delta.version} rebuilt from a delta has digest {got[:12]}, "
                            f"the control plane's is {delta.hash[:12]}")
    return snap

