#!/usr/bin/env python3
"""A Thrift echo service (thriftpy2) and a one-connection client that times its calls.

    thrift_echo.py serve PORT [--protocol binary|compact] [--transport buffered|framed]
    thrift_echo.py bench PORT SECONDS [--size BYTES] [--protocol ...] [--transport ...]
    thrift_echo.py echo PORT BYTES [--protocol ...] [--transport ...]

`bench` makes calls on one connection for SECONDS (a payload of --size bytes, 64 by default) and
prints one JSON line: calls, calls/s, p50/p99 in microseconds. `echo` sends BYTES of random
data once and prints a JSON line saying whether the answer is byte-identical. The server listens
on 127.0.0.1 (or --host) only; both sides use thriftpy2's Cython protocols where it has them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import sys
import time

import thriftpy2
from thriftpy2.protocol import TCompactProtocolFactory, TCyBinaryProtocolFactory
from thriftpy2.rpc import make_client, make_server
from thriftpy2.transport import TCyBufferedTransportFactory, TCyFramedTransportFactory

IDL = """
service Echo {
    binary echo(1: binary data)
}
"""
echo_thrift = thriftpy2.load_fp(io.StringIO(IDL), module_name="echo_thrift")
PROTOCOLS = {"binary": TCyBinaryProtocolFactory, "compact": TCompactProtocolFactory}
TRANSPORTS = {"buffered": TCyBufferedTransportFactory, "framed": TCyFramedTransportFactory}


class Handler:
    def echo(self, data: bytes) -> bytes:
        return data


def factories(a: argparse.Namespace) -> dict:
    return {"proto_factory": PROTOCOLS[a.protocol](), "trans_factory": TRANSPORTS[a.transport]()}


def serve(a: argparse.Namespace) -> None:
    server = make_server(echo_thrift.Echo, Handler(), a.host, a.port, client_timeout=None, **factories(a))
    print(f"thrift echo on {a.host}:{a.port} ({a.protocol}, {a.transport})", flush=True)
    # SIGTERM is a clean stop (status 0): the test harness checks every process it started exits so.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve()


def client(a: argparse.Namespace):
    return make_client(echo_thrift.Echo, a.host, a.port, timeout=a.timeout * 1000, **factories(a))


def bench(a: argparse.Namespace) -> None:
    c = client(a)
    payload = os.urandom(a.size)
    for _ in range(50):  # warm: the connection, the link's first stream
        c.echo(payload)
    lat: list[float] = []
    perf = time.perf_counter
    t0 = perf()
    end = t0 + a.seconds
    bad = 0
    while True:
        s = perf()
        if s >= end:
            break
        if c.echo(payload) != payload:
            bad += 1
        lat.append(perf() - s)
    wall = perf() - t0
    c.close()
    lat.sort()
    n = len(lat)
    print(json.dumps({"calls": n, "calls_s": round(n / wall, 1), "p50_us": round(lat[n // 2] * 1e6, 1),
                      "p99_us": round(lat[min(n - 1, n * 99 // 100)] * 1e6, 1), "mismatches": bad}))


def echo(a: argparse.Namespace) -> None:
    c = client(a)
    data = os.urandom(a.nbytes)
    t0 = time.perf_counter()
    got = c.echo(data)
    wall = time.perf_counter() - t0
    c.close()
    print(json.dumps({"bytes": len(data), "identical": got == data, "sha256": hashlib.sha256(data).hexdigest(),
                      "got_sha256": hashlib.sha256(got).hexdigest(), "seconds": round(wall, 3)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "bench", "echo"):
        p = sub.add_parser(name)
        p.add_argument("port", type=int)
        if name == "bench":
            p.add_argument("seconds", type=float)
            p.add_argument("--size", type=int, default=64)
        if name == "echo":
            p.add_argument("nbytes", type=int)
        p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="binary")
        p.add_argument("--transport", choices=sorted(TRANSPORTS), default="buffered")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
        p.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    a = ap.parse_args()
    {"serve": serve, "bench": bench, "echo": echo}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
