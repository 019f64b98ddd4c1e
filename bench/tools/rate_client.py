#!/usr/bin/env python3
"""Open-loop fixed-rate HTTP/1.1 GET client (uvloop); prints one JSON line of percentiles in ms.

Latency is measured from the *intended* send time of each request, not from when a connection
was free to send it, so a proxy that stalls is charged for the queue it causes (no coordinated
omission). Adapted from shared/peer-bench/rate_client.py: Host header and path are arguments,
chunked responses are understood, and the whole run is bounded in time.

usage: rate_client.py PORT RATE SECONDS CONNS [HOST] [PATH]
"""
import asyncio
import collections
import json
import sys
import time

import uvloop

WARM_S = 0.5      # sent at rate but not recorded
DRAIN_S = 5.0     # how long to wait for stragglers after the last send


class Conn(asyncio.Protocol):
    def __init__(self, st, req):
        self.st, self.req = st, req
        self.t = None
        self.buf = bytearray()
        self.t0 = None
        self.need = None
        self.chunked = False
        self.status = 0

    def connection_made(self, t):
        self.t = t

    def send(self, t0):
        self.t0 = t0
        self.buf.clear()
        self.need = None
        self.t.write(self.req)

    def data_received(self, d):
        self.buf += d
        if self.need is None:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.buf[:i]).lower()
            self.status = int(self.buf[9:12])
            self.chunked = b"transfer-encoding: chunked" in head
            j = head.find(b"content-length:")
            cl = int(head[j + 15:].split(b"\r\n", 1)[0]) if j >= 0 else 0
            self.need = i + 4 + cl
        if self.chunked:
            if not self.buf.endswith(b"0\r\n\r\n"):
                return
        elif len(self.buf) < self.need:
            return
        self.st.done(self, time.perf_counter() - self.t0, self.status)

    def connection_lost(self, exc):
        self.st.lost(self)


class State:
    def __init__(self):
        self.idle = []
        self.pending = collections.deque()
        self.lat = []
        self.errors = 0
        self.non2xx = 0
        self.t_rec = 0.0

    def issue(self, t0):
        if self.idle:
            self.idle.pop().send(t0)
        else:
            self.pending.append(t0)

    def done(self, c, lat, status):
        c.t0, t0 = None, c.t0
        if t0 >= self.t_rec:
            self.lat.append(lat)
        if not 200 <= status < 300:
            self.non2xx += 1
        if self.pending:
            c.send(self.pending.popleft())
        else:
            self.idle.append(c)

    def lost(self, c):
        self.errors += 1
        if c in self.idle:
            self.idle.remove(c)


async def main():
    port, rate, dur, nconn = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    host = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
    path = sys.argv[6] if len(sys.argv) > 6 else "/"
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    st = State()
    for _ in range(nconn):
        _, c = await loop.create_connection(lambda: Conn(st, req), "127.0.0.1", port)
        st.idle.append(c)
    total, warm = int(rate * dur), int(rate * WARM_S)
    start = time.perf_counter()
    st.t_rec = start + warm / rate
    i = 0
    while i < warm + total:
        now = time.perf_counter()
        while i < warm + total and start + i / rate <= now:
            st.issue(start + i / rate)
            i += 1
        await asyncio.sleep(0.0002)
    t_end = time.perf_counter() + DRAIN_S
    while len(st.lat) < total and time.perf_counter() < t_end:
        await asyncio.sleep(0.01)
    lat = sorted(st.lat)
    n = len(lat)

    def pct(p):
        return round(lat[min(n - 1, int(p / 100 * n))] * 1e3, 3) if n else None

    print(json.dumps({"rate": rate, "completed": n, "expected": total, "errors": st.errors,
                      "non2xx": st.non2xx, "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
                      "p999_ms": pct(99.9), "max_ms": round(lat[-1] * 1e3, 3) if n else None}))


uvloop.install()
asyncio.run(main())
