"""The proxy's side of the control plane without sockets: LKG on disk, the guard, accept/reject, health rounds."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from glassmesh.buildinfo import hot_path_doc
from glassmesh.model.snapshot import Snapshot, SnapshotError, parse_snapshot
from glassmesh.proxy import health, lkg
from glassmesh.proxy.listeners import plan, wanted
from glassmesh.proxy.watch import RETRY_MAX_S, ControlLink, keep_emptied

BUILD = hot_path_doc()["build"]  # what this tree's proxies say in their acks

DOC: dict[str, Any] = {
    "version": 3, "host": "host1", "trust_domain": "glassmesh.local", "trust_bundle": "certs/ca.pem",
    "inbound": "127.0.0.11:4143", "admin": "127.0.0.11:4191",
    "local_services": [{"name": "a", "instances": ["127.0.0.11:8080"], "outbound": "127.0.0.11:4140",
                        "cert": "certs/a.pem", "key": "certs/a.key"}],
    "services": [{"name": "b", "endpoints": [{"address": "127.0.0.12:4143", "host": "host2"},
                                             {"address": "127.0.0.13:4143", "host": "host3"}]},
                 {"name": "c", "endpoints": [{"address": "127.0.0.13:4143", "host": "host3"}]}],
}


def doc(**changes: Any) -> dict[str, Any]:
    return json.loads(json.dumps({**DOC, **changes}))


def snap(base: Path, **changes: Any) -> Snapshot:
    return parse_snapshot(json.dumps(doc(**changes)).encode(), str(base))


# --------------------------------------------------------------------------- lkg


def test_save_is_atomic_and_round_trips_with_relative_paths(tmp_path: Path) -> None:
    assert lkg.load(str(tmp_path)) is None
    s = snap(tmp_path)
    assert s.local_services[0].cert == str(tmp_path / "certs" / "a.pem")
    lkg.save(str(tmp_path), s)
    assert os.listdir(tmp_path) == ["snapshot.json"]  # no temp file left behind
    on_disk = json.loads((tmp_path / "snapshot.json").read_text())
    assert on_disk["local_services"][0]["cert"] == "certs/a.pem" and on_disk["trust_bundle"] == "certs/ca.pem"
    assert lkg.load(str(tmp_path)) == s
    # Moved elsewhere, it still points at its own certs.
    other = tmp_path / "moved"
    other.mkdir()
    os.replace(tmp_path / "snapshot.json", other / "snapshot.json")
    assert lkg.load(str(other)).local_services[0].cert == str(other / "certs" / "a.pem")  # type: ignore[union-attr]


def test_paths_outside_the_data_dir_stay_absolute(tmp_path: Path) -> None:
    s = msgspec.structs.replace(snap(tmp_path), trust_bundle="/etc/glassmesh/ca.pem")
    lkg.save(str(tmp_path), s)
    assert json.loads((tmp_path / "snapshot.json").read_text())["trust_bundle"] == "/etc/glassmesh/ca.pem"


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lkg.save(str(tmp_path), snap(tmp_path))
    before = (tmp_path / "snapshot.json").read_bytes()

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        lkg.save(str(tmp_path), snap(tmp_path, version=4))
    assert (tmp_path / "snapshot.json").read_bytes() == before
    assert os.listdir(tmp_path) == ["snapshot.json"]


def test_a_corrupt_lkg_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "snapshot.json").write_text('{"version": 1,')
    with pytest.raises(SnapshotError, match="snapshot.json: not valid JSON"):
        lkg.load(str(tmp_path))


# --------------------------------------------------------------------------- checks


def test_guard_keeps_the_endpoints_of_a_service_emptied_but_not_drained(tmp_path: Path) -> None:
    old = snap(tmp_path)
    new = snap(tmp_path, version=4, services=[{"name": "b", "endpoints": []}, {"name": "c", "endpoints": []},
                                              {"name": "d", "endpoints": []}])
    kept, warnings = keep_emptied(old, new)
    assert [len(s.endpoints) for s in kept.services] == [2, 1, 0]  # d never had any: nothing to keep
    assert len(warnings) == 2 and "removes every endpoint of 'b', which is not drained: kept its 2 old" in warnings[0]
    drained = snap(tmp_path, version=5, services=[{"name": "b", "endpoints": [], "drained": True}])
    assert keep_emptied(old, drained) == (drained, [])
    shrunk = snap(tmp_path, version=6, services=[DOC["services"][0]])  # c removed from the config: not judged
    assert keep_emptied(old, shrunk) == (shrunk, [])


def test_listener_changes_are_named(tmp_path: Path) -> None:
    old = snap(tmp_path)
    assert str(plan(wanted(old), wanted(snap(tmp_path, version=4, services=[])))) == ""
    moved = doc(version=4)
    moved["local_services"][0]["outbound"] = "127.0.0.11:5140"
    change = plan(wanted(old), wanted(parse_snapshot(json.dumps(moved).encode(), str(tmp_path))))
    assert str(change) == "added: a outbound 127.0.0.11:5140; removed: a outbound 127.0.0.11:4140"
    assert str(plan(wanted(old), wanted(snap(tmp_path, admin="127.0.0.11:4192")))) == (
        "added: admin 127.0.0.11:4192; removed: admin 127.0.0.11:4191")
    # No local service left: no inbound port either.
    assert str(plan(wanted(old), wanted(snap(tmp_path, local_services=[])))) == (
        "removed: inbound 127.0.0.11:4143, a outbound 127.0.0.11:4140")
    # The one change a running proxy cannot make: a TLS port turning into a plain one on the same address.
    swapped = doc(version=5, inbound="127.0.0.11:4140")
    swapped["local_services"][0]["outbound"] = "127.0.0.11:4143"
    with pytest.raises(SnapshotError, match="127.0.0.11:4140 changes from a outbound to inbound; that needs a proxy restart"):
        plan(wanted(old), wanted(parse_snapshot(json.dumps(swapped).encode(), str(tmp_path))))


class FakeTarget:
    reads_file = False

    def __init__(self, s: Snapshot, fail: str = "") -> None:
        self.snap, self.fail, self.applied = s, fail, 0

    def current(self) -> Snapshot:
        return self.snap

    def apply_snapshot(self, s: Snapshot) -> None:
        if self.fail:
            raise OSError(self.fail)
        self.snap = s
        self.applied += 1


def link_for(tmp_path: Path, target: FakeTarget) -> ControlLink:
    link = ControlLink("http://cp.invalid:4200/", "host1", str(tmp_path))
    link._target = target
    link.after = target.current().version
    return link


def test_handle_accepts_persists_and_acks(tmp_path: Path) -> None:
    t = FakeTarget(snap(tmp_path))
    link = link_for(tmp_path, t)
    assert link.handle(json.dumps(doc(version=7)).encode(), "7")
    assert t.snap.version == 7 and link.after == 7 and link.source == "control"
    assert json.loads((tmp_path / "snapshot.json").read_text())["version"] == 7
    assert [msgspec.to_builtins(a) for a in link._pending] == [{"version": 7, "accepted": True, "reason": "", "hot_path": BUILD}]


def test_fields_of_a_newer_control_plane_are_ignored_and_the_snapshot_taken(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The versions rule (api/wire.py): unknown fields are ignored, said once, and deltas stop until they agree."""
    t = FakeTarget(snap(tmp_path))
    link = link_for(tmp_path, t)
    newer = doc(version=8, weight=1, services=[{**DOC["services"][0], "retry_budget": {"ratio": 0.2}},
                                              DOC["services"][1]])
    assert link.handle(json.dumps(newer).encode(), "8", digest="0" * 64)
    assert t.snap.version == 8 and msgspec.to_builtins(link._pending[-1]) == {
        "version": 8, "accepted": True, "reason": "", "hot_path": BUILD}
    assert link._base is None  # what it holds hashes otherwise than the control plane's: full snapshots only
    assert link.handle(json.dumps({**newer, "version": 9}).encode(), "9", digest="0" * 64)
    said = [ln for ln in capsys.readouterr().err.splitlines() if "does not know" in ln]
    assert len(said) == 1 and "$.services[0].retry_budget, $.weight" in said[0], said
    # What it saved is what it runs: the fields it ignored are not on disk, so a strict read of it works.
    assert lkg.load(str(tmp_path)) == t.snap


@pytest.mark.parametrize(("body", "header", "version", "why"), [
    (b"{not json", "8", 8, "not valid JSON"),
    (json.dumps(doc(version=8, requires=["teleport"])).encode(), "8", 8,
     "requires feature teleport, which this proxy (glassmesh"),
    (json.dumps(doc(version=8, host="host2")).encode(), "8", 8, "snapshot is for host 'host2'"),
    (json.dumps(doc(version=8, inbound="127.0.0.11:70000")).encode(), "8", 8, "port out of range"),
])
def test_handle_rejects_with_the_reason_and_changes_nothing(tmp_path: Path, body: bytes, header: str, version: int,
                                                            why: str) -> None:
    t = FakeTarget(snap(tmp_path))
    link = link_for(tmp_path, t)
    assert not link.handle(body, header)
    assert t.applied == 0 and not (tmp_path / "snapshot.json").exists()
    ack = msgspec.to_builtins(link._pending[-1])
    assert ack["version"] == version and ack["accepted"] is False and why in ack["reason"]
    assert link.after == version  # not asked for again: the next long-poll waits for a later one
    assert link.last_reject is not None and why in link.last_reject["reason"]


def test_handle_rejects_what_the_target_cannot_apply(tmp_path: Path) -> None:
    t = FakeTarget(snap(tmp_path), fail="cannot load certs/a.pem")
    link = link_for(tmp_path, t)
    assert not link.handle(json.dumps(doc(version=9)).encode(), "9")
    assert "cannot load certs/a.pem" in link._pending[-1].reason and not (tmp_path / "snapshot.json").exists()


def test_a_local_reject_is_held_and_retried_until_it_goes_in(tmp_path: Path) -> None:
    """A file it names cannot be read: rejected (acked once), held, tried with backoff; accepted once it loads."""
    t = FakeTarget(snap(tmp_path), fail="No such file: certs/ca.pem")
    link = link_for(tmp_path, t)
    assert not link.handle(json.dumps(doc(version=9)).encode(), "9")
    assert link._pending[-1].accepted is False and "retrying" in link._pending[-1].reason
    p = link.pending
    assert p is not None and p.decoded.version == 9 and link.ready_detail()["pending_retry"]["version"] == 9
    backoffs = []
    for _ in range(7):
        assert asyncio.run(link.retry_pending()) is None
        backoffs.append(p.backoff)
    assert backoffs == [2, 4, 8, 16, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S] and len(link._pending) == 1  # one ack
    t.fail = ""
    assert asyncio.run(link.retry_pending()) is not None
    assert t.snap.version == 9 and link.pending is None and link.ready_detail()["pending_retry"] is None
    assert msgspec.to_builtins(link._pending[-1]) == {"version": 9, "accepted": True, "reason": "", "hot_path": BUILD}
    assert json.loads((tmp_path / "snapshot.json").read_text())["version"] == 9


def test_a_newer_snapshot_replaces_the_one_held_and_content_rejects_are_not_held(tmp_path: Path) -> None:
    t = FakeTarget(snap(tmp_path), fail="cannot load certificate certs/a.pem")
    link = link_for(tmp_path, t)
    assert not link.handle(json.dumps(doc(version=9)).encode(), "9")
    assert link.pending is not None and link.pending.decoded.version == 9
    assert not link.handle(json.dumps(doc(version=10, host="host2")).encode(), "10")
    assert link.pending is None  # not for this host: no retry makes it usable, and 9 is out of date
    assert not link.handle(json.dumps(doc(version=11)).encode(), "11")
    t.fail = ""
    assert link.handle(json.dumps(doc(version=12)).encode(), "12")  # the control plane moved on: 12 replaces 11
    assert link.pending is None and t.snap.version == 12


def test_an_unreadable_version_is_not_acked_but_backs_off(tmp_path: Path) -> None:
    link = link_for(tmp_path, FakeTarget(snap(tmp_path)))
    with pytest.raises(Exception, match="no readable version"):
        link.handle(b"garbage", None)
    assert link._pending == []


def test_staleness(tmp_path: Path) -> None:
    link = link_for(tmp_path, FakeTarget(snap(tmp_path)))
    link.fresh_at = 1000.0
    assert link.age(now=1012.5) == 12.5
    assert link.metrics()["control_plane_connected"] == 0.0
    link._contact()
    assert link.age() == 0.0 and link.metrics() == {
        "snapshot_age_seconds": 0.0, "control_plane_connected": 1.0,
        "snapshot_updates": {"full": 0, "delta": 0, "delta_fallbacks": 0}}
    detail = link.ready_detail()
    assert detail["control_plane"]["url"] == "http://cp.invalid:4200" and detail["control_plane"]["connected"]


# --------------------------------------------------------------------------- health rounds


def test_health_rounds_fall_rise_and_sticky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: dict[str, tuple[bool, bool, str]] = {}

    async def probe(address: str, path: str | None, timeout: float, host: str) -> tuple[bool, bool, str]:
        return answers[address]

    monkeypatch.setattr(health, "probe", probe)
    two = doc()
    two["local_services"][0]["instances"] = ["127.0.0.11:8080", "127.0.0.11:8081"]
    current = {"s": parse_snapshot(json.dumps(two).encode(), str(tmp_path))}
    h = health.HealthReporter(lambda: current["s"], report=None)  # type: ignore[arg-type]

    def round_(now: float) -> dict[str, tuple[bool, str]]:
        return {r.address: (r.healthy, r.detail) for r in asyncio.run(h.check_once(now))}

    answers.update({"127.0.0.11:8080": (True, True, "tcp connect ok"),
                    "127.0.0.11:8081": (False, False, "no answer within 1000 ms")})
    assert round_(0) == {"127.0.0.11:8080": (True, "tcp connect ok"),
                         "127.0.0.11:8081": (False, "no answer within 1000 ms")}
    answers["127.0.0.11:8081"] = (True, True, "tcp connect ok")
    assert round_(1)["127.0.0.11:8081"] == (True, "tcp connect ok")
    answers["127.0.0.11:8081"] = (False, False, "no answer within 1000 ms")
    assert round_(2)["127.0.0.11:8081"][0] is True  # one timeout is not enough
    assert round_(3)["127.0.0.11:8081"][0] is False  # two are
    answers["127.0.0.11:8080"] = (False, True, "connect refused")
    assert round_(4)["127.0.0.11:8080"] == (False, "connect refused")  # refused counts at once

    # 8081 leaves the snapshot while unhealthy (the control plane dropped it): still checked, so it can
    # be seen coming back. Once healthy and still absent, it was removed on purpose: dropped.
    current["s"] = snap(tmp_path)  # only 8080
    assert set(round_(5)) == {"127.0.0.11:8080", "127.0.0.11:8081"}
    answers["127.0.0.11:8081"] = (True, True, "tcp connect ok")
    assert round_(6)["127.0.0.11:8081"] == (True, "tcp connect ok")
    assert set(round_(7)) == {"127.0.0.11:8080"}
    # An unhealthy one that stays out is given up after STICKY_S.
    answers["127.0.0.11:8080"] = (False, True, "connect refused")
    current["s"] = snap(tmp_path, local_services=[{**DOC["local_services"][0], "instances": ["127.0.0.11:9090"]}])
    answers["127.0.0.11:9090"] = (True, True, "tcp connect ok")
    assert set(round_(8)) == {"127.0.0.11:8080", "127.0.0.11:9090"}
    assert set(round_(8 + health.STICKY_S + 1)) == {"127.0.0.11:9090"}


def test_health_specs_follow_the_snapshot(tmp_path: Path) -> None:
    d = doc()
    d["local_services"][0].update(health_http="/healthz", health_interval_ms=500, health_timeout_ms=200)
    d["local_services"].append({"name": "db", "protocol": "tcp", "instances": ["127.0.0.11:5432"],
                                "cert": "certs/db.pem", "key": "certs/db.key", "health_http": "/ignored"})
    s = parse_snapshot(json.dumps(d).encode(), str(tmp_path))
    sp = health.specs(s)
    assert sp["a"][0] == health.Spec("/healthz", 0.5, 0.2) and sp["a"][1] == ["127.0.0.11:8080"]
    assert sp["db"][0].http_path is None  # a tcp service is checked by connecting
    h = health.HealthReporter(lambda: s, report=None)  # type: ignore[arg-type]
    assert h.interval_s() == 0.5


# --------------------------------------------------------------------------- deltas


def delta_from(a: dict[str, Any], b: dict[str, Any]) -> tuple[bytes, str]:
    """What the control plane sends for b to a proxy holding a: the delta's body and b's digest."""
    from glassmesh.api.wire import make_delta
    from glassmesh.model.snapshot import decode_snapshot, snapshot_digest

    sa, sb = decode_snapshot(json.dumps(a).encode()), decode_snapshot(json.dumps(b).encode())
    hb = snapshot_digest(sb)
    return msgspec.json.encode(make_delta(sa, sb, snapshot_digest(sa), hb)), hb


def test_deltas_apply_to_the_snapshot_as_sent_and_fall_back_to_full(tmp_path: Path) -> None:
    from glassmesh.api.wire import KIND_DELTA

    t = FakeTarget(snap(tmp_path))
    link = link_for(tmp_path, t)
    assert "base" not in link.poll_params(30)  # nothing held from the control plane yet
    d7 = doc(version=7)
    assert link.handle(json.dumps(d7).encode(), "7")
    params = link.poll_params(30)
    assert params["base"] == "7" and len(params["hash"]) == 64

    d8 = doc(version=8, services=[DOC["services"][0]])  # c removed
    body, h8 = delta_from(d7, d8)
    assert link.handle(body, "8", KIND_DELTA, h8)
    assert t.snap == snap(tmp_path, version=8, services=[DOC["services"][0]])  # as a full one would be
    assert t.snap.local_services[0].cert == str(tmp_path / "certs" / "a.pem")  # paths resolved as for a full one
    assert json.loads((tmp_path / "snapshot.json").read_text())["version"] == 8
    assert link.poll_params(30)["base"] == "8" and link.poll_params(30)["hash"] == h8
    assert link.updates == {"full": 1, "delta": 1, "delta_fallbacks": 0}
    assert link.last_update == "version 8: delta from version 7: 0 services changed, 1 removed"
    assert [a.version for a in link._pending] == [7, 8]

    # A delta against a version this proxy does not hold: no ack, no change; the next poll asks for all of it.
    body, h9 = delta_from(d7, doc(version=9))
    assert not link.handle(body, "9", KIND_DELTA, h9)
    assert t.snap.version == 8 and link.after == 8 and [a.version for a in link._pending] == [7, 8]
    assert "base" not in link.poll_params(30) and link.updates["delta_fallbacks"] == 1
    assert link.ready_detail()["snapshot_updates"]["delta_fallbacks"] == 1


def test_a_delta_whose_result_fails_the_checks_is_rejected_like_a_full_one(tmp_path: Path) -> None:
    from glassmesh.api.wire import KIND_DELTA

    t = FakeTarget(snap(tmp_path))
    link = link_for(tmp_path, t)
    d7 = doc(version=7)
    assert link.handle(json.dumps(d7).encode(), "7")
    from glassmesh.api.wire import make_delta
    from glassmesh.model.snapshot import decode_snapshot, snapshot_digest

    bad = msgspec.json.decode(json.dumps(doc(version=8, inbound="127.0.0.11:70000")).encode(), type=Snapshot)
    base = decode_snapshot(json.dumps(d7).encode())
    h8 = snapshot_digest(bad)
    body = msgspec.json.encode(make_delta(base, bad, snapshot_digest(base), h8))
    assert not link.handle(body, "8", KIND_DELTA, h8)
    ack = link._pending[-1]
    assert ack.version == 8 and not ack.accepted and "port out of range" in ack.reason
    assert link.poll_params(30)["base"] == "7"  # still the one it holds


def test_the_guard_changes_what_is_served_not_the_base(tmp_path: Path) -> None:
    """Deltas apply to what the control plane sent, even when the proxy's guard kept old endpoints."""
    from glassmesh.api.wire import KIND_DELTA

    t = FakeTarget(snap(tmp_path))
    link = link_for(tmp_path, t)
    d7 = doc(version=7)
    assert link.handle(json.dumps(d7).encode(), "7")
    emptied = doc(version=8, services=[{"name": "b", "endpoints": []}, DOC["services"][1]])
    body, h8 = delta_from(d7, emptied)
    assert link.handle(body, "8", KIND_DELTA, h8) and link.warnings
    assert len(t.snap.services[0].endpoints) == 2  # kept by the guard
    back = doc(version=9)
    body, h9 = delta_from(emptied, back)
    assert link.handle(body, "9", KIND_DELTA, h9)
    assert t.snap == snap(tmp_path, version=9) and link.updates["delta"] == 2


def test_a_proxy_restarted_from_disk_offers_its_lkg_as_a_base(tmp_path: Path) -> None:
    from glassmesh.model.snapshot import decode_snapshot, snapshot_digest

    lkg.save(str(tmp_path), snap(tmp_path))
    link = link_for(tmp_path, FakeTarget(snap(tmp_path)))
    on_disk = lkg.load(str(tmp_path))
    assert on_disk is not None
    link.set_base(lkg.as_sent(str(tmp_path), on_disk))
    params = link.poll_params(30)
    assert params["base"] == "3" and params["hash"] == snapshot_digest(decode_snapshot(json.dumps(DOC).encode()))
