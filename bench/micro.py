"""Python cost of one proxied request, without sockets: feed bytes in, count the microseconds.

Drives the real ServerConn/UpstreamConn with in-memory transports, so that the
time is the proxy's own code (parsing, routing, header work, stats), not the
kernel's or OpenSSL's. Run: .venv/bin/python bench/micro.py [--side outbound|inbound] [-n N]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time

from glassmesh.demo.topology import HostSpec, LocalSpec, build_topology
from glassmesh.model.snapshot import load_snapshot
from glassmesh.proxy.http import ServerConn, UpstreamConn
from glassmesh.proxy.routing import PoolKey
from glassmesh.proxy.runtime import Runtime
from glassmesh.proxy.sides import InboundSide, OutboundSide

REQUEST = (b"GET / HTTP/1.1\r\nHost: b\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 14:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")


class FakeTransport:
    def __init__(self) -> None:
        self.out = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += len(data)

    def writelines(self, parts) -> None:
        for p in parts:
            self.write(p)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str):
        return None


def setup(side_name: str, state: str):
    build_topology(state, [HostSpec("h1", "127.0.9.1", [LocalSpec("a")]),
                           HostSpec("h2", "127.0.9.2", [LocalSpec("b", instances=[18080], outbound=False)])])
    snap = load_snapshot(f"{state}/{'h1' if side_name == 'outbound' else 'h2'}/snapshot.json")
    rt = Runtime(snap)
    if side_name == "outbound":
        side = OutboundSide(rt, "a")
        key = PoolKey("127.0.9.2", 4143, "a", "b")
        link = rt.stats.link("outbound", "a", "b")
    else:
        side = InboundSide(rt, "a", "spiffe://glassmesh.local/service/a", "b")
        key = PoolKey("127.0.9.2", 18080, None, None)
        link = side.link
    pool = rt.pool(key, link)
    up = UpstreamConn(rt, pool)
    up.connection_made(FakeTransport())
    pool.put(up)
    conn = ServerConn(rt, side)
    conn.connection_made(FakeTransport())
    return conn, up


def run(conn: ServerConn, up: UpstreamConn, n: int) -> None:
    for _ in range(n):
        conn.data_received(REQUEST)
        up.data_received(RESPONSE)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", default="outbound", choices=["outbound", "inbound"])
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        conn, up = setup(a.side, d)
        run(conn, up, 1000)
        assert conn.transport.out > 0 and up.transport.out > 0 and not conn.transport.closed
        if a.profile:
            pr = cProfile.Profile()
            pr.enable()
            run(conn, up, a.n)
            pr.disable()
            pstats.Stats(pr).sort_stats("tottime").print_stats(25)
            return
        t = time.perf_counter()
        run(conn, up, a.n)
        dt = time.perf_counter() - t
        print(f"{a.side}: {dt / a.n * 1e6:.2f} us of Python per request ({a.n} requests)")


if __name__ == "__main__":
    asyncio.run(main())
