"""A stop (cancellation) that reaches the control-plane watch at any moment ends it: none is swallowed.

The watch's long-poll ran its call in a sub-task and, on the way out, awaited
the cancelled sub-tasks under `suppress(CancelledError)`. A stop landing in
that moment (one event-loop turn after each failed poll) was swallowed and
the watch polled on forever: a proxy that ignored SIGTERM. Here the real
ControlLink polls a real loopback address where nothing listens (connection
refused, as when the control plane has just stopped), and is cancelled at
every one of the first loop turns in turn, in both places a stop reaches it:
the first-snapshot wait (`_main` cancels it) and the running watch
(`ControlLink.stop` cancels it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from glassmesh.proxy import watch
from glassmesh.stopping import cancel_and_wait

TURNS = 60  # event-loop turns scanned: the first poll fails and its sub-tasks are reaped well within these


def _refusing_url() -> str:
    """An http:// URL on loopback where nothing listens (bound for a moment, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def _cancel_after(task: asyncio.Task[object], turns: int) -> None:
    loop = asyncio.get_running_loop()

    def step(n: int) -> None:
        if n == 0:
            task.cancel()
        else:
            loop.call_soon(step, n - 1)

    step(turns)


class _Target:
    reads_file = False

    def __init__(self, snap: object) -> None:
        self.snap = snap

    def current(self) -> object:
        return self.snap

    def apply_snapshot(self, snap: object) -> None:
        self.snap = snap


async def _lost_turns(start: Callable[[], Awaitable[object]], after: Callable[[], Awaitable[None]] | None = None
                      ) -> list[int]:
    """The loop turns (0..TURNS-1) at which a cancellation of `start()`'s task did not end it within 3 s."""
    lost = []
    for turns in range(TURNS):
        task = asyncio.ensure_future(start())
        await _cancel_after(task, turns)
        done, _ = await asyncio.wait({task}, timeout=3.0)
        if not done:
            lost.append(turns)
            await cancel_and_wait(task, timeout=3.0)
        if after is not None:
            await after()
    return lost


def test_every_cancellation_of_the_first_snapshot_wait_ends_it(tmp_path: Path) -> None:
    url = _refusing_url()
    lost = asyncio.run(_lost_turns(lambda: watch.ControlLink(url, "host2", str(tmp_path)).first_snapshot()))
    assert lost == [], "cancellations swallowed at these loop turns (the watch polled on)"


def test_every_cancellation_of_the_running_watch_ends_it(tmp_path: Path) -> None:
    from glassmesh.model.snapshot import Snapshot

    url = _refusing_url()
    snap = Snapshot(version=1, host="host2", trust_domain="t", trust_bundle="ca.pem")
    links: list[watch.ControlLink] = []

    def start() -> Awaitable[None]:
        link = watch.ControlLink(url, "host2", str(tmp_path))
        link._target = _Target(snap)  # type: ignore[assignment]
        links.append(link)
        return link._watch()

    async def close() -> None:
        await links[-1].close()

    lost = asyncio.run(_lost_turns(start, close))
    assert lost == [], "cancellations swallowed at these loop turns (the watch polled on)"
