"""The control plane's ask queues, without sockets: what an operator's request sees in each case."""

from __future__ import annotations

import asyncio

import pytest

from glassmesh.control import asks as asks_mod
from glassmesh.control.asks import AskError, Asks


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _proxy(a: Asks, host: str, answer) -> None:  # type: ignore[no-untyped-def]
    """A proxy's loop: poll, then answer each ask with `answer(ask)` -> list of (events, done, error)."""
    while True:
        for ask in await a.poll(host, 1.0):
            for events, done, error in answer(ask):
                if not await a.answer(host, ask.id, events, done, error):
                    break


def test_ask_gathers_every_batch_until_done() -> None:
    async def go() -> list[dict[str, int]]:
        a = Asks()
        p = asyncio.create_task(_proxy(a, "h1", lambda ask: [([{"n": 1}], False, ""), ([{"n": 2}], True, "")]))
        await asyncio.sleep(0.01)
        try:
            return await a.ask("h1", "hello", {})
        finally:
            p.cancel()

    assert run(go()) == [{"n": 1}, {"n": 2}]


def test_a_host_not_polling_fails_at_once_with_the_reason() -> None:
    with pytest.raises(AskError, match="not connected"):
        run(Asks().ask("h1", "hello"))


def test_the_proxys_error_is_the_askers_error() -> None:
    async def go() -> None:
        a = Asks()
        p = asyncio.create_task(_proxy(a, "h1", lambda ask: [([], False, "no such thing")]))
        await asyncio.sleep(0.01)
        try:
            await a.ask("h1", "hello")
        finally:
            p.cancel()

    with pytest.raises(AskError, match="h1: no such thing"):
        run(go())


def test_an_ask_nobody_takes_fails_after_the_pickup_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asks_mod, "PICKUP_S", 0.2)

    async def go() -> None:
        a = Asks()
        a._hosts.setdefault("h1", asks_mod._Host()).polling = 1  # connected, but it never takes the ask
        await a.ask("h1", "hello")

    with pytest.raises(AskError, match="did not take"):
        run(go())


def test_a_host_cannot_answer_another_hosts_ask_and_a_gone_asker_stops_the_stream() -> None:
    async def go() -> None:
        a = Asks()
        got: list[str] = []

        async def proxy() -> None:
            ask = (await a.poll("h1", 1.0))[0]
            got.append(ask.id)
            with pytest.raises(KeyError):
                await a.answer("h2", ask.id, [{"forged": True}], True, "")
            n = 0
            while await a.answer("h1", ask.id, [{"n": n}], False, ""):
                n += 1
            got.append(f"stopped after {n}")

        a._hosts.setdefault("h1", asks_mod._Host()).polling = 1
        p = asyncio.create_task(proxy())
        async with a.stream("h1", "tap", {}) as events:
            seen = [await anext(events) for _ in range(3)]
        assert seen == [{"n": 0}, {"n": 1}, {"n": 2}]
        await asyncio.wait_for(p, 2)
        assert got[1].startswith("stopped after")
        with pytest.raises(KeyError):  # the ask is gone: its id is unknown now
            await a.answer("h1", got[0], [], True, "")

    run(go())


def test_queues_are_bounded() -> None:
    async def go() -> None:
        a = Asks()
        a._hosts.setdefault("h1", asks_mod._Host()).polling = 1
        for _ in range(asks_mod.MAX_QUEUED_PER_HOST):
            a._start("h1", "hello", {})
        with pytest.raises(AskError, match="too many asks"):
            a._start("h1", "hello", {})

    run(go())


def test_a_poll_whose_proxy_left_takes_nothing_the_live_one_gets_the_ask() -> None:
    """A restarted proxy's old long-poll is still open (its client gone): the ask must reach the new one."""

    async def go() -> list[dict[str, int]]:
        a = Asks()
        dead = asyncio.create_task(a.poll("h1", 5.0, alive=lambda: False))
        await asyncio.sleep(0.01)
        p = asyncio.create_task(_proxy(a, "h1", lambda ask: [([{"n": 1}], True, "")]))
        await asyncio.sleep(0.01)
        try:
            got = await a.ask("h1", "hello", {})
            assert await dead == []
            return got
        finally:
            p.cancel()

    assert run(go()) == [{"n": 1}]
