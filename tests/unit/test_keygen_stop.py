"""A stop (SIGTERM cancels the proxy's main task) that lands as the key-making child finishes is not lost.

On Python 3.11, asyncio.wait_for returns the inner result when its caller is cancelled in the
same loop iteration as the inner call completes, and the cancellation is gone. The proxy made its
first service key that way while waiting for its first snapshot; a SIGTERM that arrived then was
swallowed, and the proxy slept in its next retry until the stop deadline killed it (status 1,
tests/e2e/test_stop.py). The race is one loop iteration wide, so the child here is a stand-in whose
output is released by the test in the same iteration as the cancel: what a real child does when it
exits at that moment.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from glassmesh.proxy import keygen


class _Child:
    """What asyncio.create_subprocess_exec returns, with its output released by the test."""

    def __init__(self, out: asyncio.Future[tuple[bytes, bytes]]) -> None:
        self.out = out
        self.returncode: int | None = None
        self.killed = False

    async def communicate(self, data: bytes) -> tuple[bytes, bytes]:
        got = await self.out
        self.returncode = 0
        return got

    def kill(self) -> None:
        self.killed = True

    async def wait(self) -> int:
        return self.returncode or 0


def test_a_stop_as_the_key_arrives_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def run() -> BaseException | keygen.NewKey:
        out: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()

        async def spawn(*args: Any, **kw: Any) -> _Child:
            return _Child(out)

        monkeypatch.setattr(keygen.asyncio, "create_subprocess_exec", spawn)
        task = asyncio.create_task(keygen.new_key("spiffe://t/service/b"))
        for _ in range(5):
            await asyncio.sleep(0)  # the task now waits for the child's output
        out.set_result((json.dumps({"key_pem": "k", "csr_pem": "c", "spki": ""}).encode(), b""))
        task.cancel()  # SIGTERM, in the same loop iteration as the child's exit
        try:
            return await task
        except asyncio.CancelledError as e:
            return e

    got = asyncio.run(run())
    assert isinstance(got, asyncio.CancelledError), f"the stop was swallowed: new_key returned {got!r}"
