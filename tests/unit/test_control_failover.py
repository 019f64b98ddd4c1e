"""Failover between control-plane replicas without sockets: URL lists, when the link moves, backoff, the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from glassmesh.cli import _control_client
from glassmesh.proxy.watch import BACKOFF_MAX_S, BACKOFF_MIN_S, ControlError, ControlLink, split_urls

R1, R2, R3 = "http://127.0.0.1:4200", "http://127.0.0.2:4200", "http://127.0.0.3:4200"


def test_split_urls_keeps_order_drops_duplicates_and_slashes() -> None:
    assert split_urls(f"{R1}/, {R2} ,{R1},") == [R1, R2]
    assert split_urls([R2, R1]) == [R2, R1]
    assert split_urls("https://a:4201,https://b:4201") == ["https://a:4201", "https://b:4201"]


@pytest.mark.parametrize(("spec", "why"), [
    ("", "no control-plane URL"),
    (" , ", "no control-plane URL"),
    ("127.0.0.1:4200", "must be an http:// or https:// URL"),
    (f"{R1},https://127.0.0.2:4201", "same scheme"),
])
def test_split_urls_refuses(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        split_urls(spec)


def link(tmp_path: Path, *urls: str) -> ControlLink:
    return ControlLink(",".join(urls), "host1", str(tmp_path))


def test_one_url_never_moves(tmp_path: Path) -> None:
    lk = link(tmp_path, R1)
    assert lk.url == R1 and lk.urls == [R1]
    assert not lk._failed(R1, aiohttp.ClientConnectionError("refused"))
    assert lk.url == R1 and lk.failovers == 0


def test_unreachable_timeout_and_5xx_move_on_4xx_does_not(tmp_path: Path) -> None:
    lk = link(tmp_path, R1, R2, R3)
    assert not lk._failed(R1, ControlError("host unknown", 404))  # another replica would say the same
    assert lk.url == R1
    assert lk._failed(R1, aiohttp.ClientConnectionError("refused"))
    assert lk.url == R2
    assert lk._failed(R2, TimeoutError())
    assert lk.url == R3
    assert lk._failed(R3, ControlError("store unavailable", 503))
    assert lk.url == R1 and lk.failovers == 3  # round the list


def test_calls_failing_on_the_same_replica_move_the_link_once(tmp_path: Path) -> None:
    """The watch, a report and a renewal all in flight when a replica dies: one move, not three."""
    lk = link(tmp_path, R1, R2)
    err = aiohttp.ServerDisconnectedError()
    assert lk._failed(R1, err)
    assert not lk._failed(R1, err)
    assert not lk._failed(R1, OSError("reset"))
    assert lk.url == R2 and lk.failovers == 1


def test_a_move_wakes_the_open_poll_and_the_next_poll_is_short(tmp_path: Path) -> None:
    lk = link(tmp_path, R1, R2)
    assert not lk._moved.is_set() and not lk._probe
    lk._failed(R1, OSError("refused"))
    assert lk._moved.is_set() and lk._probe


def test_backoff_grows_only_after_every_replica_failed_in_a_row(tmp_path: Path) -> None:
    one, two = link(tmp_path, R1), link(tmp_path, R1, R2)
    b1 = b2 = BACKOFF_MIN_S
    grown1, grown2 = [], []
    for misses in range(1, 7):
        _, b1 = one._pause(b1, misses)
        _, b2 = two._pause(b2, misses)
        grown1.append(b1)
        grown2.append(b2)
    m = BACKOFF_MIN_S
    assert grown1 == [min(BACKOFF_MAX_S, m * 2 ** i) for i in range(1, 7)]  # one URL: as before
    assert grown2 == [m, 2 * m, 2 * m, 4 * m, 4 * m, 8 * m]


def test_ready_says_which_replica(tmp_path: Path) -> None:
    lk = link(tmp_path, R2, R1)
    lk._failed(R2, OSError("refused"))
    cp = lk.ready_detail()["control_plane"]
    assert cp["url"] == R1 and cp["replicas"] == [R2, R1] and cp["failovers"] == 1


def test_renewals_report_failures_against_the_replica_they_used(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """run_renewals takes the current URL each round and tells the link which one failed."""
    from glassmesh.proxy import enroll

    lk = link(tmp_path, R1, R2)
    ident = enroll.ProxyIdentity(str(tmp_path), "host1", "glassmesh.local", [])
    seen: list[str] = []

    async def renew_due(session: Any, url: str, snap: Any) -> bool:
        seen.append(url)
        if len(seen) >= 2:
            raise asyncio.CancelledError
        raise aiohttp.ClientConnectionError("refused")

    real_sleep = asyncio.sleep

    async def no_sleep(_: float) -> None:
        await real_sleep(0)

    monkeypatch.setattr(ident, "renew_due", renew_due)
    monkeypatch.setattr(enroll.asyncio, "sleep", no_sleep)

    async def run() -> None:
        with pytest.raises(asyncio.CancelledError):
            await ident.run_renewals(lambda: None, lambda: lk.url, lambda: None, lambda: None,  # type: ignore[arg-type,return-value]
                                     failed=lk._failed)

    asyncio.run(run())
    assert seen == [R1, R2] and lk.url == R2


# --------------------------------------------------------------------------- the CLI


# The operator API speaks TLS only: the CLI refuses an http:// URL before asking anyone.
O1, O2, O3 = (u.replace("http://", "https://") for u in (R1, R2, R3))


def test_cli_tries_replicas_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    answers: dict[str, Any] = {
        O1: _control_client.Unreachable(f"cannot reach the control plane at {O1}: refused"),
        O2: (503, {"error": "store unavailable"}),
        O3: (200, {"ok": True}),
    }

    def one(base: str, method: str, path: str, payload: Any, timeout: float) -> tuple[int, dict[str, Any]]:
        calls.append(base)
        a = answers[base]
        if isinstance(a, Exception):
            raise a
        return a  # type: ignore[no-any-return]

    monkeypatch.setattr(_control_client, "_call_one", one)
    assert _control_client.call(f"{O1},{O2},{O3}", "GET", "/v1/status") == (200, {"ok": True})
    assert calls == [O1, O2, O3]
    calls.clear()
    # No better answer: the 5xx is returned, so the command prints the control plane's reason.
    assert _control_client.call(f"{O1},{O2}", "GET", "/v1/status") == (503, {"error": "store unavailable"})
    # A 4xx is an answer: no other replica is asked.
    answers[O1] = (404, {"error": "no such version"})
    calls.clear()
    assert _control_client.call(f"{O1},{O3}", "GET", "/v1/x") == (404, {"error": "no such version"})
    assert calls == [O1]
    # None reachable: one line naming each.
    answers[O1] = _control_client.Unreachable(f"cannot reach the control plane at {O1}: refused")
    answers[O2] = _control_client.Unreachable(f"cannot reach the control plane at {O2}: refused")
    with pytest.raises(_control_client.Unreachable) as e:
        _control_client.call(f"{O1},{O2}", "GET", "/v1/status")
    assert O1 in e.value.message and O2 in e.value.message
    with pytest.raises(_control_client.Unreachable) as e:
        _control_client.call(O1, "GET", "/v1/status")
    assert e.value.message == f"cannot reach the control plane at {O1}: refused"  # one URL: as before
