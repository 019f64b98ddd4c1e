"""Instructions per redis round trip through a tcp link, counted by callgrind (a busy machine cannot move it).

The tcp section's timings (bench/tcplinks.py) move with every other tenant of a shared machine;
this counts the user-space instructions one proxy process executes per small message through a
tcp link, as bench/instructions.py does for HTTP requests. For each proxy of a glassmesh pair
(outbound, then inbound), with the link's connections carried as streams of the multiplexed
connection (`mux`, the default) and as a TLS connection each (`http1`): the measured proxy runs
under `valgrind --tool=callgrind --instr-atstart=no`, the other normally; one client connection
sends `PING` to redis-server N0 times to warm up, instrumentation is switched on, N0 more,
counters zeroed, then N round trips on the same connection; the total is divided by N.

    .venv/bin/python bench/tcp_instructions.py [-n 2000] [--modes mux,http1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tcplinks  # noqa: E402
from instructions import callgrind_control  # noqa: E402
from stack import Procs, glassmesh_cmd, make_certs, wait_port  # noqa: E402

PORT_OFFSET = 9500  # clear of make bench's ports, of bench/instructions.py's and of the demo's


def pings(port: int, n: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            s.sendall(b"PING\r\n")
            got = b""
            while not got.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    raise SystemExit(f"tcp_instructions: the link on {port} closed")
                got += chunk
            if got != b"+PONG\r\n":
                raise SystemExit(f"tcp_instructions: redis answered {got!r}")


def measure(procs: Procs, run: Path, name: str, argv: list[str], other: tuple[str, list[str]],
            wait: list[int], port: int, n: int, warm: int) -> float:
    """Instructions per round trip of `argv` under callgrind while `other` runs normally.

    As bench/instructions.py's measure, with PINGs through the link for HTTP requests.
    """
    procs.start(other[0], other[1])
    p = procs.start(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={run}/cg.{name}.%p"] + argv)
    try:
        until = time.time() + 120
        if not all(wait_port(w, until) for w in wait):
            raise SystemExit(f"tcp_instructions: ports {wait} did not all open; see {run}/{name}.log")
        pings(port, warm)
        callgrind_control("-i", "on", str(p.pid))
        pings(port, warm)
        callgrind_control("-z", str(p.pid))
        pings(port, n)
        callgrind_control("-d", str(p.pid))
        dump = max(run.glob(f"cg.{name}.*.*"), key=lambda f: f.stat().st_size)
        totals = re.search(r"^(?:summary|totals):\s*(\d+)", dump.read_text(errors="replace"), re.M)
        if not totals:
            raise SystemExit(f"tcp_instructions: no totals in {dump}")
        return int(totals.group(1)) / n
    finally:
        procs.stop([name, other[0]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="measured round trips (default 2000)")
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--modes", default="mux,http1", help="comma list of mux,http1 (the outbound's peer_protocol)")
    ap.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    a = ap.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"tcp_instructions: needs {tool} (apt-get install valgrind redis-server)")
    q = tcplinks._q({"UP": 18080 + PORT_OFFSET})
    run = Path(tempfile.mkdtemp(prefix="glassmesh-tcp-instructions-"))
    procs = Procs(run)
    rows = []
    try:
        certs = run / "certs"
        make_certs(certs, ["client", "redis", "thrift"])
        procs.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(q["REDIS"]), "--save", "",
                              "--appendonly", "no", "--dir", str(run)])
        if not wait_port(q["REDIS"], time.time() + 10):
            raise SystemExit("tcp_instructions: redis-server did not start")
        for mode in [m.strip() for m in a.modes.split(",") if m.strip()]:
            p_out, p_in = tcplinks.snapshots(run / mode, certs, q, peer_protocol=mode)
            gm = glassmesh_cmd() + ["proxy", "--workers", "1", "--config"]
            out_cmd, in_cmd = gm + [str(p_out)], gm + [str(p_in)]
            wait = [q["TL_REDIS"], q["TL_IN"]]
            for side, name, argv, other in (("outbound", f"gm_out_{mode}", out_cmd, (f"gm_in_{mode}", in_cmd)),
                                            ("inbound", f"gm_in_{mode}", in_cmd, (f"gm_out_{mode}", out_cmd))):
                ir = measure(procs, run, name, argv, other, wait, q["TL_REDIS"], a.n, a.warm)
                rows.append((mode, side, ir))
                print(f"{mode:6s} {side:8s} {ir:,.0f} instructions per round trip", flush=True)
    finally:
        procs.stop_all()
        if not a.keep:
            shutil.rmtree(run, ignore_errors=True)
    print(f"\nPer redis PING round trip through a tcp link, 1 connection, {a.n} round trips, callgrind "
          f"(user space of one proxy process):\n")
    print("| link carried as | side | instructions |\n|---|---|---|")
    for mode, side, ir in rows:
        label = "streams of the mux connection" if mode == "mux" else "a TLS connection each (glassmesh-tcp/1)"
        print(f"| {label} | {side} | {ir:,.0f} |")
    if a.keep:
        print(f"\ncallgrind dumps kept in {run} (callgrind_annotate {run}/cg.gm_out_mux.*)")


if __name__ == "__main__":
    main()
