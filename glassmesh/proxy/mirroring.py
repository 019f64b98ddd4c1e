"""Mirroring's plumbing: a copy of a request sent to another endpoint, its answer read and dropped.

Which requests are copied, and to which subset, is the route's MirrorStage
(stages/mirror.py). The copy goes on a connection of its own, opened by the
mirror endpoint's pool (so through mutual TLS to a peer proxy, as any request),
in a task of its own: the real request never waits for it, and nothing of the
copy's answer reaches the client. A copy that cannot be sent is dropped quietly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from glassmesh.proxy.connector import ConnectError

if TYPE_CHECKING:
    from glassmesh.proxy.pool import Pool

MIRROR_TIMEOUT_S = 10.0  # a copy's connection is closed after this, answered or not


class Discard(asyncio.Protocol):
    """Writes the copy, reads its answer into nothing, and closes at its end (or after MIRROR_TIMEOUT_S)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: Any = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        # The copy's answer began: that is all a mirror needs to know; its body is not read.
        if not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


async def send_copy(pool: Pool, head: bytes) -> None:
    """Send `head` (a request without a body, with `connection: close`) to pool's endpoint and drop the answer."""
    copy = head[:-2] + b"connection: close\r\n\r\n"
    try:
        tr, proto = await pool.connect(lambda: Discard(copy))
    except (ConnectError, OSError):
        return
    try:
        async with asyncio.timeout(MIRROR_TIMEOUT_S):
            await proto.done
    except TimeoutError:
        pass
    finally:
        tr.close()
