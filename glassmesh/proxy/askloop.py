"""The asks long-poll against one control-plane replica, and the answers posted back (proxy/asks.py).

A handler that raises ends its ask with the error as the answer; it never
takes the proxy down. At most MAX_RUNNING asks run at once: more are
answered "busy".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec

from glassmesh.api.asks import POLL_WAIT_S, AnswerPost, AnswerReply, AskList, answer_path, asks_path
from glassmesh.proxy.asks import HANDLERS, Query
from glassmesh.stopping import cancel_and_wait

MAX_RUNNING = 16
RETRY_S = 2.0  # after a failed poll, before the next (the snapshot watch says what is wrong, not this loop)
POST_TIMEOUT_S = 10.0


class AskLoop:
    """Polls one replica for asks and runs each in a task of its own."""

    def __init__(self, host: str, url: str, session: Callable[[], aiohttp.ClientSession],
                 tls: Callable[[], dict[str, Any]], query: Query, log: Callable[[str], None]) -> None:
        self.host, self.url = host, url
        self._session, self._tls, self._query, self._log = session, tls, query, log
        self._running: set[asyncio.Task[None]] = set()
        self.answered = 0
        self.failed = 0

    async def run(self) -> None:
        try:
            while True:
                try:
                    asks = await self._poll()
                except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError, msgspec.ValidationError):
                    await asyncio.sleep(RETRY_S)  # the control plane's outages are the watch's to report
                    continue
                for ask in asks:
                    if len(self._running) >= MAX_RUNNING:
                        t = asyncio.create_task(self._post(ask.id, AnswerPost(error="the proxy is busy with "
                                                                                     "other asks: try again")))
                    else:
                        t = asyncio.create_task(self._answer(ask.id, ask.kind, ask.args), name=f"ask-{ask.kind}")
                    self._running.add(t)
                    t.add_done_callback(self._running.discard)
        finally:
            await cancel_and_wait(*self._running)

    async def _poll(self) -> list[Any]:
        timeout = aiohttp.ClientTimeout(total=POLL_WAIT_S + 10, sock_connect=5.0)
        async with self._session().get(self.url + asks_path(self.host), params={"wait": str(POLL_WAIT_S)},
                                       timeout=timeout, **self._tls()) as r:
            body = await r.read()
            if r.status != 200:
                await asyncio.sleep(RETRY_S)  # an older control plane (404) or one shutting down (503)
                return []
            return msgspec.json.decode(body, type=AskList).asks

    async def _post(self, ask_id: str, post: AnswerPost) -> bool:
        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_S)
        async with self._session().post(self.url + answer_path(self.host, ask_id), data=msgspec.json.encode(post),
                                        headers={"content-type": "application/json"}, timeout=timeout,
                                        **self._tls()) as r:
            body = await r.read()
            if r.status != 200:
                return False
            return msgspec.json.decode(body, type=AnswerReply).more

    async def _answer(self, ask_id: str, kind: str, args: dict[str, Any]) -> None:
        handler = HANDLERS.get(kind)
        gone = False

        async def emit(events: list[dict[str, Any]]) -> bool:
            nonlocal gone
            if gone:
                return False
            more = await self._post(ask_id, AnswerPost(events=events))
            gone = not more
            return more

        error = ""
        try:
            if handler is None:
                error = f"this proxy does not know the ask {kind!r} (an older release?)"
            else:
                await handler(args, emit, self._query)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - an ask's failure is its answer, never the proxy's end
            error = f"{type(e).__name__}: {e}"
            self.failed += 1
        if gone:
            return
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError):
            await self._post(ask_id, AnswerPost(done=not error, error=error))
            self.answered += 1
