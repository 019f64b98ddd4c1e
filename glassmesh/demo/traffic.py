"""The demo's traffic generator: a steady request rate at the frontend, counted.

    python -m glassmesh.demo.traffic --target 127.0.0.11:8080 --rate 50 --connections 4

Open loop: each of the keep-alive connections sends on its own schedule
(rate / connections per second), so a slow response delays that connection's
next request but not the plan; a connection that falls more than a second
behind skips ahead instead of bursting. Counts go to stdout once a second and,
with --stats FILE, to a JSON file (replaced atomically) that the runner reads.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field

import uvloop

from glassmesh.demo.httpio import Connection, split_hostport

# Latency histogram bounds in seconds (upper bounds; the last bucket is open).
BOUNDS = [
    b / 1000 for b in (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000)
]


@dataclass
class Counts:
    sent: int = 0
    ok: int = 0  # 2xx/3xx
    status: dict[str, int] = field(default_factory=dict)  # "200": n, "502": n
    errors: dict[str, int] = field(default_factory=dict)  # exception name: n
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    connections_opened: int = 0
    started: float = field(default_factory=time.time)
    last_body: bytes = b""  # A's last answer: the request id of its call to B is read from it once a second

    def record(self, status: int | None, seconds: float, error: str | None = None) -> None:
        if status is not None:
            self.status[str(status)] = self.status.get(str(status), 0) + 1
            if status < 400:
                self.ok += 1
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile in seconds, interpolated in its bucket as for the proxy's histograms."""
        from glassmesh.demo.metrics import histogram_quantile

        cumulative, seen = [], 0
        for le, n in zip([*BOUNDS, math.inf], self.buckets, strict=True):
            seen += n
            cumulative.append((le, float(seen)))
        return histogram_quantile(q, cumulative)

    def to_json(self) -> dict[str, object]:
        done = sum(self.buckets)
        return {
            "sent": self.sent,
            "done": done,
            "ok": self.ok,
            "failed": done - self.ok,
            "status": self.status,
            "errors": self.errors,
            "p50_ms": _ms(self.quantile(0.5)),
            "p99_ms": _ms(self.quantile(0.99)),
            "connections_opened": self.connections_opened,
            "elapsed_s": round(time.time() - self.started, 3),
            "recent_request_id": recent_request_id(self.last_body),
        }


def recent_request_id(body: bytes) -> str | None:
    """The x-request-id B saw on A's call in this answer of A's: one to hand to `glassmesh trace`."""
    try:
        doc = json.loads(body)
        rid = doc["calls"]["b"]["body"]["request_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return rid if isinstance(rid, str) and rid else None


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 3)


async def _worker(conn: Connection, counts: Counts, interval: float, path: str, stop: asyncio.Event) -> None:
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if next_at > now:
            try:
                async with asyncio.timeout(next_at - now):  # not wait_for: in 3.11 it can swallow a cancel
                    await stop.wait()
                return
            except TimeoutError:
                pass
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        counts.sent += 1
        t0 = time.perf_counter()
        opened = conn.opened
        try:
            resp = await conn.request("GET", path, [("host", "a")])
            counts.record(resp.status, time.perf_counter() - t0)
            counts.last_body = resp.body
        except Exception as e:
            counts.record(None, time.perf_counter() - t0, type(e).__name__)
            await asyncio.sleep(min(interval, 0.2))  # do not spin on a dead target
        counts.connections_opened += conn.opened - opened


def _write_stats(path: str, counts: Counts) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(counts.to_json(), f)
    os.replace(tmp, path)


async def run(args: argparse.Namespace) -> Counts:
    host, port = split_hostport(args.target)
    counts = Counts()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    n = max(1, args.connections)
    interval = n / args.rate if args.rate > 0 else 0.0
    conns = [Connection(host, port, timeout=args.timeout) for _ in range(n)]
    print(f"traffic: {args.rate} req/s over {n} keep-alive connections to {args.target}{args.path}", flush=True)
    async with asyncio.TaskGroup() as tg:
        for c in conns:
            tg.create_task(_worker(c, counts, interval, args.path, stop))
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while not stop.is_set():
            try:
                async with asyncio.timeout(1.0):
                    await stop.wait()
            except TimeoutError:
                pass
            if args.stats:
                _write_stats(args.stats, counts)
            print(json.dumps(counts.to_json()), flush=True)
            if deadline is not None and time.monotonic() >= deadline:
                stop.set()
    for c in conns:
        c.close()
    if args.stats:
        _write_stats(args.stats, counts)
    print("traffic: done " + json.dumps(counts.to_json()), flush=True)
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m glassmesh.demo.traffic", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="ip:port of the frontend app")
    p.add_argument("--path", default="/")
    p.add_argument("--rate", type=float, default=50.0, help="requests per second in total (0 = flat out)")
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0 = until SIGTERM/SIGINT)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--stats", help="JSON file to keep the counts in")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    uvloop.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
