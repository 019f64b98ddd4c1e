"""The trace ring (proxy/ring.py) fed by the real inbound ServerConn (test_exchange_playbook's Play).

What `glassmesh trace` can find after traffic wraps the ring, that a record holds
nothing of its exchange, and that a ring going round makes no new record (it is
always on: a record made per request was most of what it cost).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator

import pytest

from glassmesh.proxy.ring import BUSY_PER_S, BUSY_RECENT, SLOW_S, Rec, Ring
from glassmesh.proxy.routing import PoolKey
from glassmesh.proxy.spans import Exporter
from tests.unit.test_exchange_playbook import Play, stage


@pytest.fixture
def play() -> Iterator[Play]:
    with stage() as (d, _):
        p = Play(d)
        p.rt.ring = Ring(recent=8, failed=4)  # small, so that a few requests wrap it; attached as server.py does
        p.conn.ring = p.rt.ring  # what a connection made under a runtime with a ring holds
        yield p


def exchange(play: Play, rid: str, status: int = 200) -> None:
    play.sent(f"GET /{rid} HTTP/1.1\r\nHost: b\r\nx-request-id: {rid}\r\n\r\n".encode())
    play.app_sends(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
    assert play.client_gets().startswith(f"HTTP/1.1 {status} ".encode())


def found(ring: Ring, rid: str) -> list[str]:
    return [r.path.decode() for r in ring.find(rid.encode())]


def test_a_ring_that_goes_round_keeps_the_newest_and_failures_outlive_a_burst_of_successes(play: Play) -> None:
    ring = play.rt.ring
    assert ring is not None
    exchange(play, "early")
    held = ring.find(b"early")
    for i in range(3):
        exchange(play, f"failed-{i}", 500)
    for i in range(20):
        exchange(play, f"ok-{i}")
    assert [f for i in range(20) for f in found(ring, f"ok-{i}")] == [f"/ok-{i}" for i in range(12, 20)]
    assert found(ring, "early") == []
    assert [f for i in range(3) for f in found(ring, f"failed-{i}")] == ["/failed-0", "/failed-1", "/failed-2"]
    rec = ring.find(b"failed-1")[0]
    assert (rec.status, rec.side, rec.method, rec.rid, rec.attempts) == (500, "inbound", b"GET", b"failed-1", 1)
    assert rec.t0 <= rec.end
    # A record handed out (to the trace ask) stays as it was while the ring goes round and reuses its slot.
    assert [(r.path, r.status) for r in held] == [(b"/early", 200)]


def test_a_slow_request_outlives_the_fast_ones_that_follow_it(play: Play) -> None:
    """The ring of every request is short (it costs its memory); a slow one is what people come to look at."""
    ring = play.rt.ring
    assert ring is not None
    play.sent(b"GET /slow HTTP/1.1\r\nHost: b\r\nx-request-id: slow\r\n\r\n")
    time.sleep(SLOW_S + 0.02)  # the app takes its time
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert play.client_gets().startswith(b"HTTP/1.1 200 ")
    for i in range(20):
        exchange(play, f"fast-{i}")
    (rec,) = ring.find(b"slow")
    assert rec.end - rec.t0 >= SLOW_S and rec.status == 200
    assert [f for i in range(20) for f in found(ring, f"fast-{i}")] == [f"/fast-{i}" for i in range(12, 20)]
    assert sum(r is not None for r in ring.slow) == 1, "fast requests never enter the slow ring"


def test_a_busy_process_keeps_the_newest_few_and_a_quiet_one_all_its_ring_holds(play: Play) -> None:
    """Busy (BUSY_PER_S a second): the ring of fast requests wraps at BUSY_RECENT and lets go of the rest."""
    ring = play.rt.ring = play.conn.ring = Ring(recent=BUSY_RECENT + 100, failed=4)
    for i in range(BUSY_RECENT + 50):  # quiet: the whole ring
        exchange(play, f"quiet-{i}")
    assert found(ring, "quiet-0") == ["/quiet-0"]
    ring.count, ring.second_ends = BUSY_PER_S, 0.0  # the last second was busy; this request begins a new one
    for i in range(BUSY_RECENT + 2):
        exchange(play, f"busy-{i}")
    assert found(ring, "busy-0") == [] and found(ring, "busy-1") == []
    assert found(ring, "busy-2") == ["/busy-2"]
    assert found(ring, f"quiet-{BUSY_RECENT + 49}") == [], "the quiet second's records past the few are let go"
    assert sum(r is not None for r in ring.recent) == BUSY_RECENT, "a busy ring holds no more than its few"
    ring.count, ring.second_ends = 0, 0.0  # a quiet second again: the whole ring
    for i in range(BUSY_RECENT + 50):
        exchange(play, f"again-{i}")
    assert found(ring, "again-0") == ["/again-0"]


def test_a_full_ring_makes_no_new_record_per_request(play: Play) -> None:
    ring = play.rt.ring
    assert ring is not None
    for i in range(8):
        exchange(play, f"fill-{i}")
    slots = [id(r) for r in ring.recent]
    for i in range(30):
        exchange(play, f"more-{i}")
    assert [id(r) for r in ring.recent] == slots, "each request filled an existing record in place"
    assert found(ring, "more-29") == ["/more-29"]


def test_a_record_holds_nothing_of_its_exchange_that_may_change_or_live_on(play: Play) -> None:
    ring = play.rt.ring
    assert ring is not None
    ex = play.sent(b"GET /tried HTTP/1.1\r\nHost: b\r\nx-request-id: tried\r\n\r\n")
    ex.tried = {("127.0.9.3", 18080)}  # an earlier try went elsewhere (as sides.retry records it)
    play.app_sends(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    ex.tried.add(("127.0.9.4", 18080))  # the exchange's own set is the exchange's: the record keeps a copy
    (rec,) = [r for r in ring.recent if r is not None and r.rid == b"tried"]
    assert rec.tried == (("127.0.9.3", 18080),)
    kept = gc.get_referents(rec)
    assert ex not in kept and play.conn not in kept
    assert all(isinstance(o, (bytes, str, tuple, PoolKey, type(None))) for o in kept), [type(o) for o in kept]


def test_spans_queued_for_the_collector_are_copies_the_ring_does_not_overwrite(play: Play) -> None:
    ring = play.rt.ring
    assert ring is not None

    async def run() -> list[Rec]:
        ring.spans = Exporter("http://127.0.0.1:9/v1/traces", "h2")
        try:
            for i in range(20):
                exchange(play, f"span-{i}")
            return list(ring.spans.queue)
        finally:
            ring.spans.closed = True
            if ring.spans.timer is not None:
                ring.spans.timer.cancel()

    queued = asyncio.get_event_loop().run_until_complete(run())
    assert [r.rid for r in queued] == [f"span-{i}".encode() for i in range(20)]

