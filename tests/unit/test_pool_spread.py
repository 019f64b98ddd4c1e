"""A busy multiplexed link grows by one connection at a time, never past its cap.

Real loopback sockets and real MuxConnections on both ends (plain TCP: the
cap is about how many connections the pool opens, not about TLS).
"""

from __future__ import annotations

import asyncio

from glassmesh.proxy.mux import MuxConnection
from glassmesh.proxy.pool import MUX_CONNS_MAX, MUX_SPREAD_STREAMS, Pool
from glassmesh.proxy.routing import PoolKey


class _Sink(asyncio.Protocol):
    pass


async def _burst_on_a_busy_link() -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    accepted = 0

    def server_conn() -> MuxConnection:
        nonlocal accepted
        accepted += 1
        return MuxConnection(on_stream=_Sink, workers=2)  # a peer with two workers: cap 4

    server = await loop.create_server(server_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(PoolKey("127.0.0.1", port, None, None), None, None, None, 2.0, mux=True)
    try:
        first = await pool.mux_connection()
        for _ in range(MUX_SPREAD_STREAMS):
            first.open(_Sink)  # busy: the next request asks for another connection
        for _ in range(50):  # the peer's SETTINGS (its worker count) arrive
            if first.peer_workers == 2:
                break
            await asyncio.sleep(0.01)
        assert first.peer_workers == 2
        # Sixteen requests in one loop turn, each finding the link busy.
        got = await asyncio.gather(*(pool.mux_connection() for _ in range(16)))
        assert all(c is first for c in got)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if pool._growing is not None and pool._growing.done():
                break
        await asyncio.sleep(0.05)
        return len(pool.muxes), accepted
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


def test_a_burst_of_requests_on_a_busy_link_opens_one_more_connection_not_one_each() -> None:
    muxes, accepted = asyncio.run(_burst_on_a_busy_link())
    assert muxes == 2 and accepted == 2, f"{muxes} connections in the pool, {accepted} accepted"
    assert muxes <= MUX_CONNS_MAX
