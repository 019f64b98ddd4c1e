"""Garbage collections per proxied request, with the trace ring on and off: what the ring costs the GC.

Callgrind (bench/instructions.py) counts the instructions, GC included; this says why they are
there. Each glassmesh pair runs its proxies under this file's `--serve` mode, which puts a
gc.callbacks hook in the process (counting collections per generation and the time they took)
and writes the counts to a file every second from the proxy's own sweeper. After a warm-up that
wraps the ring (2,048 + 1,024 records) several times, N keep-alive requests are sent on one
connection and the counts before and after are compared. Everything on 127.0.0.1.

    PORT_OFFSET=5300 .venv/bin/python bench/gc_per_request.py [-n 20000] [--warm 8000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def serve(stats_file: str) -> None:
    """The proxy process: `glassmesh proxy ...` with a gc.callbacks hook, counts written every second."""
    counts: dict[str, Any] = {"collections": [0, 0, 0], "collected": [0, 0, 0], "gc_s": [0.0, 0.0, 0.0]}
    t0 = [0.0]

    def hook(phase: str, info: dict[str, int]) -> None:
        g = info["generation"]
        if phase == "start":
            t0[0] = time.perf_counter()
            return
        counts["collections"][g] += 1
        counts["collected"][g] += info["collected"]
        counts["gc_s"][g] += time.perf_counter() - t0[0]

    gc.callbacks.append(hook)
    from glassmesh.proxy import runtime
    sweeper = runtime.Runtime.sweeper

    async def write_counts(self: Any) -> None:
        import asyncio
        while True:
            await asyncio.sleep(0.5)
            tmp = stats_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump({**counts, "tracked": len(gc.get_objects())}, f)
            os.replace(tmp, stats_file)

    async def sweeper_and_counts(self: Any) -> None:
        self.spawn(write_counts(self))
        await sweeper(self)

    runtime.Runtime.sweeper = sweeper_and_counts  # type: ignore[method-assign]
    from glassmesh.cli.main import main
    sys.argv = ["glassmesh", *sys.argv[3:]]
    main()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from instructions import first_ok, requests, start_app
    from stack import Procs, glassmesh_snapshots, ports, wait_port

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20000, help="measured requests (default 20000)")
    ap.add_argument("--warm", type=int, default=8000)
    a = ap.parse_args()
    pp = ports(int(os.environ.get("PORT_OFFSET", "9000")))
    run = Path(tempfile.mkdtemp(prefix="glassmesh-gc-"))
    procs = Procs(run)
    cmd = [sys.executable, __file__, "--serve"]
    results: list[tuple[str, str, dict[str, float]]] = []
    try:
        certs = start_app(procs, run, pp)
        p_out, p_in = glassmesh_snapshots(run / "glassmesh", certs, pp, tcp=False)
        for ring in ("on", "off"):
            env = {**os.environ, "GLASSMESH_TRACE_RING": "1" if ring == "on" else "0"}
            files = {side: str(run / f"gc.{side}.{ring}.json") for side in ("outbound", "inbound")}
            for side, conf in (("outbound", p_out), ("inbound", p_in)):
                procs.start(f"{side}_{ring}", cmd + [files[side], "proxy", "--workers", "1", "--config", str(conf)],
                            env=env)
            until = time.time() + 60
            for port in (pp["GM_OUT"], pp["GM_IN"]):
                if not wait_port(port, until):
                    raise SystemExit(f"gc_per_request: port {port} did not open; see {run}")
            first_ok(pp["GM_OUT"], until)
            requests(pp["GM_OUT"], a.warm)
            time.sleep(1.2)
            before = {s: json.loads(Path(f).read_text()) for s, f in files.items()}
            requests(pp["GM_OUT"], a.n)
            time.sleep(1.2)
            after = {s: json.loads(Path(f).read_text()) for s, f in files.items()}
            for side in files:
                b, e = before[side], after[side]
                r = {f"gen{g} per 1k req": (e["collections"][g] - b["collections"][g]) * 1000 / a.n for g in range(3)}
                r["GC us per req"] = sum(e["gc_s"][g] - b["gc_s"][g] for g in range(3)) * 1e6 / a.n
                r["tracked objects"] = e["tracked"]
                results.append((ring, side, r))
            procs.stop([f"outbound_{ring}", f"inbound_{ring}"])
    finally:
        procs.stop_all()
    print(f"\nGarbage collections, {a.n} keep-alive requests on 1 connection after {a.warm} to warm up:\n")
    cols = list(results[0][2])
    print("| trace ring | side | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for ring, side, r in results:
        print(f"| {ring} | {side} | " + " | ".join(f"{r[c]:,.2f}" if isinstance(r[c], float) else f"{r[c]:,}"
                                                  for c in cols) + " |")
    shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
