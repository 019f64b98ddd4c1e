"""Snapshot deltas: computed by the control plane, applied by the proxy, proven by the content digest.

The property that matters: for any two snapshots a and b of one host,
applying delta(a, b) to a gives exactly b (equal structs, equal digests),
through the JSON the wire carries; and a delta applied to anything but its
base, or tampered with, is caught (DeltaMismatch), never silently accepted.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glassmesh.api.wire import (
    HEAD_FIELDS,
    DeltaMismatch,
    SnapshotDelta,
    apply_delta,
    decode_delta,
    make_delta,
)
from glassmesh.model.snapshot import (
    DigestCache,
    Endpoint,
    Limits,
    LocalService,
    Service,
    Snapshot,
    TcpLink,
    Timeouts,
    snapshot_digest,
)

NAMES = [f"s{i}" for i in range(12)]


def addr(n: int, port: int = 4143) -> str:
    return f"127.0.{n // 250}.{n % 250 + 1}:{port}"


def base_snapshot(version: int = 3, n: int = 5) -> Snapshot:
    return Snapshot(
        version=version, host="h1", trust_domain="glassmesh.local", trust_bundle="certs/ca.pem",
        inbound=addr(0), admin=addr(0, 4191),
        local_services=[LocalService(name="a", instances=[addr(0, 8080)], outbound=addr(0, 4140),
                                     cert="certs/a.pem", key="certs/a.key")],
        services=[Service(name=NAMES[i], endpoints=[Endpoint(address=addr(j), host=f"h{j}") for j in range(1, 4)])
                  for i in range(n)],
    )


def wire(delta: SnapshotDelta) -> SnapshotDelta:
    """Through the bytes the control plane sends and the proxy reads."""
    return decode_delta(msgspec.json.encode(delta))


def roundtrip(a: Snapshot, b: Snapshot, cache: DigestCache | None = None) -> Snapshot:
    ha, hb = snapshot_digest(a), snapshot_digest(b)
    return apply_delta(a, ha, wire(make_delta(a, b, ha, hb)), cache)


# --------------------------------------------------------------------------- examples


def test_one_endpoint_change_is_one_service() -> None:
    a = base_snapshot()
    svc = a.services[2]
    b = msgspec.structs.replace(a, version=4, services=[
        *a.services[:2], msgspec.structs.replace(svc, endpoints=svc.endpoints[:2]), *a.services[3:]])
    ha, hb = snapshot_digest(a), snapshot_digest(b)
    d = make_delta(a, b, ha, hb)
    assert [s.name for s in d.services] == ["s2"] and d.removed == []
    assert all(getattr(d, f) is msgspec.UNSET for f in HEAD_FIELDS)
    body = msgspec.json.encode(d)
    assert len(body) < 600 < len(msgspec.json.encode(b))
    got = apply_delta(a, ha, decode_delta(body))
    assert got == b and snapshot_digest(got) == hb
    # Unchanged services are the base's own objects: nothing re-decoded, digests stay cached.
    assert all(got.services[i] is a.services[i] for i in (0, 1, 3, 4))


def test_added_removed_reordered_and_top_level_fields() -> None:
    a = base_snapshot()
    added = Service(name="s9", protocol="tcp", endpoints=[Endpoint(address="10.0.0.1:5432", host="db", mesh=False)])
    b = msgspec.structs.replace(
        a, version=9, services=[a.services[0], a.services[3], added], peer_protocol="http1",
        timeouts=Timeouts(connect_ms=500),
        tcp_links=[TcpLink(source="a", listen=addr(0, 5432), destination="s9")])
    ha, hb = snapshot_digest(a), snapshot_digest(b)
    d = make_delta(a, b, ha, hb)
    assert d.removed == ["s1", "s2", "s4"] and [s.name for s in d.services] == ["s9"]
    assert d.order is msgspec.UNSET  # sorted by name: no order needed
    assert {f for f in HEAD_FIELDS if getattr(d, f) is not msgspec.UNSET} == {"peer_protocol", "timeouts",
                                                                             "tcp_links"}
    assert roundtrip(a, b) == b
    unsorted = msgspec.structs.replace(b, services=list(reversed(b.services)))
    d2 = make_delta(a, unsorted, ha, snapshot_digest(unsorted))
    assert d2.order == ["s9", "s3", "s0"]
    assert roundtrip(a, unsorted) == unsorted


def test_delta_fields_mirror_the_snapshot() -> None:
    """Every top-level Snapshot field but version, host and services can travel in a delta, with its type."""
    snap_fields = set(Snapshot.__struct_fields__) - {"version", "host", "services"}
    assert set(HEAD_FIELDS) == snap_fields and snap_fields <= set(SnapshotDelta.__struct_fields__)


@pytest.mark.parametrize("tamper", ["base_hash", "hash", "service", "removed", "order", "host", "base_version"])
def test_a_delta_that_does_not_fit_is_a_mismatch(tamper: str) -> None:
    a = base_snapshot()
    b = msgspec.structs.replace(a, version=4, services=a.services[:4])
    ha, hb = snapshot_digest(a), snapshot_digest(b)
    d = make_delta(a, b, ha, hb)
    bad = {
        "base_hash": msgspec.structs.replace(d, base_hash="0" * 64),
        "hash": msgspec.structs.replace(d, hash="0" * 64),
        # A changed service the digest does not cover: the control plane's digest is of b.
        "service": msgspec.structs.replace(d, services=[msgspec.structs.replace(a.services[0], endpoints=[])]),
        "removed": msgspec.structs.replace(d, removed=["s11"]),
        "order": msgspec.structs.replace(d, order=["s0", "s1"]),
        "host": msgspec.structs.replace(d, host="h2"),
        "base_version": msgspec.structs.replace(d, base_version=2),
    }[tamper]
    with pytest.raises(DeltaMismatch):
        apply_delta(a, ha, wire(bad))


def test_a_base_that_differs_from_the_control_planes_is_caught_by_the_result_digest() -> None:
    """The proxy's copy changed under it (its guard, a bug): the rebuilt snapshot's digest says so."""
    a = base_snapshot()
    b = msgspec.structs.replace(a, version=4, services=a.services[:4])
    ha = snapshot_digest(a)
    d = make_delta(a, b, ha, snapshot_digest(b))
    drifted = msgspec.structs.replace(a, services=[msgspec.structs.replace(a.services[0], endpoints=[]),
                                                   *a.services[1:]])
    with pytest.raises(DeltaMismatch, match="digest"):
        apply_delta(drifted, ha, d)  # claims the right base digest, holds other content


def test_malformed_deltas_are_mismatches_not_rejects() -> None:
    with pytest.raises(DeltaMismatch):
        decode_delta(b"{not json")
    # A field of a newer control plane is ignored (api/wire.py rule 3): the result's digest then differs from
    # the control plane's, so the delta is a mismatch when applied, and the proxy asks for the full snapshot.
    assert decode_delta(b'{"version": 1, "host": "h1", "base_version": 0, "base_hash": "", "hash": "", "x": 1}'
                        ).version == 1
    with pytest.raises(DeltaMismatch):  # the Snapshot schema's checks apply to what a delta carries
        decode_delta(b'{"version": 1, "host": "h1", "base_version": 0, "base_hash": "", "hash": "", '
                     b'"inbound": "not an address"}')


def test_digest_cache_is_by_identity() -> None:
    a = base_snapshot()
    cache = DigestCache()
    h = snapshot_digest(a, cache)
    assert h == snapshot_digest(a) == snapshot_digest(a, cache)
    # An equal-named but different object is hashed afresh, never served a stale digest.
    changed = msgspec.structs.replace(a, services=[msgspec.structs.replace(a.services[0], drained=True),
                                                   *a.services[1:]])
    assert snapshot_digest(changed, cache) == snapshot_digest(changed) != h
    assert snapshot_digest(msgspec.structs.replace(a, version=4)) != h  # the version is content


# --------------------------------------------------------------------------- the property

names = st.sampled_from(NAMES)
endpoints = st.lists(st.builds(Endpoint, address=st.integers(1, 40).map(addr), host=st.sampled_from(["h1", "h2", "h3"]),
                               mesh=st.booleans()), max_size=4)
services = st.dictionaries(names, st.tuples(st.sampled_from(["http", "tcp"]), endpoints, st.booleans()),
                           max_size=len(NAMES)).map(
    lambda d: [Service(name=n, protocol=p, endpoints=e, drained=dr) for n, (p, e, dr) in d.items()])
snapshots = st.builds(
    lambda version, svcs, shuffle, peer, ls_port, timeouts, limits, bundle: Snapshot(
        version=version, host="h1", trust_domain="glassmesh.local", trust_bundle=bundle, peer_protocol=peer,
        inbound=addr(0), admin=addr(0, 4191),
        local_services=[LocalService(name="a", outbound=addr(0, ls_port), cert="certs/a.pem", key="certs/a.key")],
        services=svcs if shuffle else sorted(svcs, key=lambda s: s.name),
        timeouts=timeouts, limits=limits),
    st.integers(0, 1000), services, st.booleans(), st.sampled_from(["mux", "http1"]), st.integers(4140, 4142),
    st.sampled_from([Timeouts(), Timeouts(connect_ms=100)]), st.sampled_from([Limits(), Limits(max_headers=50)]),
    st.sampled_from(["certs/ca.pem", "/etc/glassmesh/ca.pem"]))


@settings(max_examples=300, deadline=None)
@given(snapshots, snapshots, st.booleans())
def test_apply_of_delta_is_the_target(a: Snapshot, b: Snapshot, reuse: bool) -> None:
    if reuse:  # as compile does: unchanged services are shared objects
        mine = {s.name: s for s in a.services}
        b = msgspec.structs.replace(b, services=[mine[s.name] if mine.get(s.name) == s else s for s in b.services])
    got = roundtrip(a, b, DigestCache())
    assert got == b
    assert msgspec.json.encode(got) == msgspec.json.encode(b)
    assert snapshot_digest(got) == snapshot_digest(b)


@settings(max_examples=200, deadline=None)
@given(snapshots, snapshots)
def test_digests_tell_snapshots_apart(a: Snapshot, b: Snapshot) -> None:
    assert (snapshot_digest(a) == snapshot_digest(b)) == (msgspec.json.encode(a) == msgspec.json.encode(b))
