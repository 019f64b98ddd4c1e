"""The control plane's end of the ask channel (api/asks.py): queue an ask for a host, gather its answer.

Each replica keeps its own queues: a proxy holds an asks long-poll open on
every replica it knows, so whichever replica an operator reaches can ask
any connected host. Nothing here is stored: an ask lives as long as the
operator's request that made it.

Bounds: asks queued per host, open asks in all, and answer batches buffered
per ask (a stream whose reader falls behind is ended, not buffered
without limit); an ask the proxy has not picked up in time fails with a
clear reason instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from glassmesh.api.asks import POLL_WAIT_S, Ask
from glassmesh.control.api import error, json_response

CONNECTED_S = POLL_WAIT_S + 10.0  # a host that polled this long ago (or is polling) is connected
MAX_QUEUED_PER_HOST = 32
MAX_OPEN = 1024
BUFFERED_BATCHES = 64  # per ask: batches posted and not yet read
PICKUP_S = 5.0  # an ask the proxy has not taken by then fails: it is not listening to this replica
READER_SLOW_S = 5.0  # a batch that waits this long for room ends the ask (more: false)


class AskError(Exception):
    """An ask that got no answer: the host is not connected, too slow, or its proxy said why."""


@dataclass
class _Open:
    host: str
    kind: str
    batches: asyncio.Queue[tuple[list[dict[str, Any]], bool, str]] = field(
        default_factory=lambda: asyncio.Queue(BUFFERED_BATCHES))
    taken: asyncio.Event = field(default_factory=asyncio.Event)
    gone: bool = False  # the asker left: the proxy is told more: false


@dataclass
class _Host:
    queue: list[Ask] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    polling: int = 0
    last_poll: float = 0.0


class Asks:
    def __init__(self) -> None:
        self._hosts: dict[str, _Host] = {}
        self._open: dict[str, _Open] = {}

    # --- the proxy's side -----------------------------------------------------------------------------
    async def poll(self, host: str, wait: float, alive: Callable[[], bool] = lambda: True) -> list[Ask]:
        """The asks queued for `host`, at once if any, else the first to come within `wait` seconds.

        `alive` says whether the poller is still there: a proxy that restarted leaves its old long-poll
        open here until it times out (aiohttp does not cancel a handler whose client left), and that
        one must not take the asks meant for the new process.
        """
        h = self._hosts.setdefault(host, _Host())
        h.polling += 1
        h.last_poll = time.monotonic()
        try:
            if not h.queue and wait > 0:
                h.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await h.wake.wait()
            if not alive():
                return []
            asks, h.queue = h.queue, []
            for a in asks:
                o = self._open.get(a.id)
                if o is not None:
                    o.taken.set()
            return [a for a in asks if a.id in self._open]
        finally:
            h.polling -= 1
            h.last_poll = time.monotonic()

    async def answer(self, host: str, ask_id: str, events: list[dict[str, Any]], done: bool, error: str) -> bool:
        """One batch from `host`'s proxy; False: the asker is gone. KeyError: no such ask for this host."""
        o = self._open.get(ask_id)
        if o is None or o.host != host:  # a host answers only what was asked of it
            raise KeyError(ask_id)
        if o.gone:
            return False
        try:
            async with asyncio.timeout(READER_SLOW_S):
                await o.batches.put((events, done, error))
        except TimeoutError:
            o.gone = True
            return False
        return not (o.gone or done or error)

    def connected(self) -> set[str]:
        now = time.monotonic()
        return {name for name, h in self._hosts.items() if h.polling or now - h.last_poll < CONNECTED_S}

    # --- the operator's side ------------------------------------------------------------------------
    def _start(self, host: str, kind: str, args: dict[str, Any]) -> tuple[str, _Open]:
        if host not in self.connected():
            raise AskError(f"host {host}'s proxy is not connected to this control-plane replica "
                           f"(it polls for asks every {POLL_WAIT_S:.0f} s while it runs)")
        h = self._hosts[host]
        if len(h.queue) >= MAX_QUEUED_PER_HOST or len(self._open) >= MAX_OPEN:
            raise AskError(f"too many asks open for host {host}: try again shortly")
        ask_id = secrets.token_hex(12)
        o = self._open[ask_id] = _Open(host, kind)
        h.queue.append(Ask(id=ask_id, kind=kind, args=args))
        h.wake.set()
        return ask_id, o

    async def _batches(self, ask_id: str, o: _Open, idle_s: float | None) -> AsyncIterator[dict[str, Any]]:
        try:
            async with asyncio.timeout(PICKUP_S):
                await o.taken.wait()
        except TimeoutError:
            raise AskError(f"host {o.host}'s proxy did not take the {o.kind} ask within {PICKUP_S:.0f} s") from None
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    events, done, error = await o.batches.get()
            except TimeoutError:
                raise AskError(f"host {o.host}'s proxy did not answer the {o.kind} ask in time") from None
            for ev in events:
                yield ev
            if error:
                raise AskError(f"host {o.host}: {error}")
            if done:
                return

    def _close(self, ask_id: str) -> None:
        o = self._open.pop(ask_id, None)
        if o is not None:
            o.gone = True
            while not o.batches.empty():  # a post waiting for room goes on, and hears more: false
                o.batches.get_nowait()
            h = self._hosts.get(o.host)
            if h is not None:
                h.queue = [a for a in h.queue if a.id != ask_id]

    async def ask(self, host: str, kind: str, args: dict[str, Any] | None = None,
                  timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Every event of one ask, until the proxy says done; AskError when it cannot be had."""
        ask_id, o = self._start(host, kind, dict(args or {}))
        try:
            async with asyncio.timeout(timeout_s + PICKUP_S):
                return [ev async for ev in self._batches(ask_id, o, None)]
        except TimeoutError:
            raise AskError(f"host {host}'s proxy did not finish the {kind} ask within {timeout_s:.0f} s") from None
        finally:
            self._close(ask_id)

    @contextlib.asynccontextmanager
    async def stream(self, host: str, kind: str, args: dict[str, Any] | None = None,
                     idle_s: float | None = None) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Events as they come, until done, or until the block exits (the proxy is then told to stop)."""
        ask_id, o = self._start(host, kind, dict(args or {}))
        gen = self._batches(ask_id, o, idle_s)
        try:
            yield gen
        finally:
            self._close(ask_id)
            await gen.aclose()


ASKS = web.AppKey("asks", Asks)


async def hello(request: web.Request) -> web.Response:
    """`GET /v1/hosts/{host}/hello` (operators): is the host's proxy reachable over the ask channel, and how.

    Each serving process of the proxy answers for itself (pid, snapshot version), so this also shows
    that an ask reaches every worker. The smallest use of the channel, for `glassmesh check` and tests.
    """
    host = request.match_info["host"]
    try:
        events = await request.app[ASKS].ask(host, "hello", {}, timeout_s=5.0)
    except AskError as e:
        return error(503, str(e))
    return json_response({"host": host, "answers": events})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/hosts/{host}/hello", hello)
