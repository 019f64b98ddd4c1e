"""Instructions per proxied request, counted by callgrind: a figure that a busy machine cannot move.

`make bench` measures time, which other tenants of a shared machine disturb; this counts the
user-space instructions one proxy process executes per request (TLS, parsing, Python and the
kernel's side excluded), so that two builds, or glassmesh and the nginx pair, compare exactly.

For each proxy of a pair (outbound, then inbound): the other proxy runs normally, the measured one
under `valgrind --tool=callgrind --instr-atstart=no`; N0 requests warm it up, instrumentation is
switched on, N0 more run, counters are zeroed, N keep-alive requests are sent on one connection
(1 connection, so that nothing batches), and the total is divided by N. Start-up and warm-up are
therefore left out alike for both pairs. nginx runs the same outbound/inbound configs as
`make bench`, as one process (`master_process off; daemon off;`), so that callgrind sees the
process that serves the requests. `--cache-sim` adds the simulated L1 misses. The app is a
1-worker nginx, as in `make bench`; everything on 127.0.0.1.

    .venv/bin/python bench/instructions.py [--pair glassmesh,nginx] [-n 2000] [--warm 300] [--cache-sim] [--policy]
        [--conns 32] [--close] [--seconds 15]   # under wrk: 32 connections, or a new connection per request

The proxies inherit the environment: `GLASSMESH_TRACE_RING=0` turns the trace ring off. The ring
holds 2,048 + 1,024 records, so its steady state (every request overwriting one) shows only when
the warm-up and the measured requests wrap it, e.g. `--warm 3100 -n 4000` (the warm-up runs twice).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import (  # noqa: E402
    Procs,
    features_policy,
    glassmesh_cmd,
    glassmesh_snapshots,
    make_certs,
    ports,
    render,
    wait_port,
)

# Clear of make bench's ports and of the demo's; PORT_OFFSET=N in the environment moves it (two runs at once).
PORT_OFFSET = int(os.environ.get("PORT_OFFSET", "9000"))


def requests(port: int, n: int) -> None:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", "/", headers={"Host": "up"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise SystemExit(f"instructions: got {r.status} through port {port}")
    c.close()


# --conns/--close/--seconds: the measured requests come from wrk instead (set by main).
LOAD: dict[str, int] = {"conns": 1, "close": 0, "seconds": 15}


def measured_load(port: int, n: int) -> int:
    """The measured requests: n keep-alive ones on one connection, or wrk's for --seconds (how many it made)."""
    if LOAD["conns"] == 1 and not LOAD["close"]:
        requests(port, n)
        return n
    if not shutil.which("wrk"):
        raise SystemExit("instructions: --conns/--close need wrk (apt-get install wrk)")
    cmd = ["wrk", "-t1", f"-c{LOAD['conns']}", f"-d{LOAD['seconds']}s", "--timeout", "30s", "-H", "Host: up"]
    if LOAD["close"]:
        cmd += ["-H", "Connection: close"]
    r = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                       timeout=LOAD["seconds"] + 60)
    m = re.search(r"(\d+) requests in", r.stdout)
    if not m or "Non-2xx" in r.stdout or int(m.group(1)) == 0:
        raise SystemExit(f"instructions: wrk through port {port} failed:\n{r.stdout}{r.stderr}")
    return int(m.group(1))


def first_ok(port: int, until: float) -> None:
    """Wait for one 200 through the pair: the proxy under callgrind answers its first TLS handshake
    tens of times slower, and its peer may time that out (502) on a loaded machine."""
    last = ""
    while time.time() < until:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/", headers={"Host": "up"})
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
            last = f"{r.status} {r.getheader('glassmesh-error') or ''}".strip()
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    raise SystemExit(f"instructions: no 200 through port {port} in time (last: {last})")


def start_app(procs: Procs, run: Path, pp: dict[str, int]) -> Path:
    """Certificates in run/certs and the app (a 1-worker nginx, as in `make bench`), listening."""
    certs = run / "certs"
    make_certs(certs, ["client", "up", "bulk"])
    procs.start("upstream", ["nginx", "-p", f"{run}/", "-e", f"{run}/upstream.stderr",
                             "-c", render("upstream_nginx.conf", run, certs, pp), "-g", "daemon off;"])
    if not wait_port(pp["UP"], time.time() + 10):
        raise SystemExit(f"{Path(sys.argv[0]).stem}: the app (nginx) did not start")
    return certs


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=60)


def measure(procs: Procs, run: Path, name: str, argv: list[str], other: tuple[str, list[str]],
            wait: list[int], client_port: int, n: int, warm: int, cache_sim: bool) -> dict[str, float]:
    """Per-request counts of `argv` under callgrind while `other` runs normally."""
    out = run / f"cg.{name}"
    procs.start(other[0], other[1])
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}.%p"]
    if cache_sim:
        vg.append("--cache-sim=yes")
    p = procs.start(name, vg + argv)
    try:
        until = time.time() + 120
        for port in wait:
            if not wait_port(port, until):
                raise SystemExit(f"instructions: port {port} did not open; see {run}/{name}.log")
        first_ok(client_port, until)
        requests(client_port, warm)
        callgrind_control("-i", "on", str(p.pid))
        requests(client_port, warm)
        callgrind_control("-z", str(p.pid))
        n = measured_load(client_port, n)
        callgrind_control("-d", str(p.pid))
        dumps = sorted(run.glob(f"cg.{name}.*.*"), key=lambda f: f.stat().st_size, reverse=True)
        text = dumps[0].read_text(errors="replace")
        events = re.search(r"^events:\s*(.+)$", text, re.M)
        totals = re.search(r"^(?:summary|totals):\s*(.+)$", text, re.M)
        if not events or not totals:
            raise SystemExit(f"instructions: no totals in {dumps[0]}")
        return {e: int(v) / n for e, v in zip(events.group(1).split(), totals.group(1).split(), strict=False)}
    finally:
        procs.stop([name, other[0]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", default="glassmesh,nginx", help="comma list of glassmesh,nginx")
    ap.add_argument("-n", type=int, default=2000, help="measured requests (default 2000)")
    ap.add_argument("--warm", type=int, default=300)
    ap.add_argument("--policy", action="store_true",
                    help="give the outbound proxy the features section's traffic policy (20 routes, 1%% split, ...)")
    ap.add_argument("--conns", type=int, default=1,
                    help="measure under wrk with this many connections for --seconds (default: 1, -n requests)")
    ap.add_argument("--close", action="store_true",
                    help="every measured request on a new connection (wrk, Connection: close): a connection's cost")
    ap.add_argument("--seconds", type=int, default=15, help="how long wrk runs with --conns/--close (default 15)")
    ap.add_argument("--cache-sim", action="store_true", help="also count simulated L1 misses (slower)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run directory and its callgrind dumps (for callgrind_annotate)")
    a = ap.parse_args()
    LOAD.update(conns=max(a.conns, 1), close=int(a.close), seconds=max(a.seconds, 1))
    for tool in ("valgrind", "callgrind_control", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"instructions: needs {tool} (apt-get install valgrind nginx)")
    which = [w.strip() for w in a.pair.split(",") if w.strip()]
    if set(which) - {"glassmesh", "nginx"}:
        raise SystemExit(f"instructions: unknown --pair {sorted(set(which) - {'glassmesh', 'nginx'})}; "
                         "known: glassmesh, nginx")
    pp = ports(PORT_OFFSET)
    run = Path(tempfile.mkdtemp(prefix="glassmesh-instructions-"))
    procs = Procs(run)
    rows: list[tuple[str, str, dict[str, float]]] = []
    try:
        certs = start_app(procs, run, pp)
        if "glassmesh" in which:
            p_out, p_in = glassmesh_snapshots(run / "glassmesh", certs, pp, tcp=False,
                                              policy=features_policy() if a.policy else None)
            gm = glassmesh_cmd() + ["proxy", "--workers", "1", "--config"]
            out_cmd, in_cmd = gm + [str(p_out)], gm + [str(p_in)]
            wait = [pp["GM_OUT"], pp["GM_IN"]]
            rows.append(("glassmesh", "outbound", measure(procs, run, "gm_out", out_cmd, ("gm_in", in_cmd), wait,
                                                          pp["GM_OUT"], a.n, a.warm, a.cache_sim)))
            rows.append(("glassmesh", "inbound", measure(procs, run, "gm_in", in_cmd, ("gm_out", out_cmd), wait,
                                                         pp["GM_OUT"], a.n, a.warm, a.cache_sim)))
        if "nginx" in which:
            ngx = lambda conf: ["nginx", "-p", f"{run}/", "-e", f"{run}/{conf}.stderr",  # noqa: E731
                                "-c", render(conf, run, certs, pp), "-g", "daemon off; master_process off;"]
            out_cmd, in_cmd = ngx("nginx_outbound.conf"), ngx("nginx_inbound.conf")
            wait = [pp["NGX_OUT"], pp["NGX_IN"]]
            rows.append(("nginx pair", "outbound", measure(procs, run, "ngx_out", out_cmd, ("ngx_in", in_cmd), wait,
                                                           pp["NGX_OUT"], a.n, a.warm, a.cache_sim)))
            rows.append(("nginx pair", "inbound", measure(procs, run, "ngx_in", in_cmd, ("ngx_out", out_cmd), wait,
                                                          pp["NGX_OUT"], a.n, a.warm, a.cache_sim)))
    finally:
        procs.stop_all()
    how = (f"{a.n} keep-alive requests on 1 connection" if a.conns == 1 and not a.close else
           f"wrk, {a.conns} connections, {a.seconds} s" + (", a new connection per request" if a.close else ""))
    print(f"\nPer request, {how}, callgrind (user space of one proxy process):\n")
    cols = ["Ir", "I1mr", "D1mr"] if a.cache_sim else ["Ir"]
    names = {"Ir": "instructions", "I1mr": "L1 instruction misses", "D1mr": "L1 data read misses"}
    print("| proxy | side | " + " | ".join(names[c] for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for who, side, r in rows:
        print(f"| {who} | {side} | " + " | ".join(f"{r.get(c, 0):,.0f}" for c in cols) + " |")
    if a.keep:
        print(f"\ncallgrind dumps kept in {run} (e.g. callgrind_annotate {run}/cg.ngx_out.*.1)")
    else:
        shutil.rmtree(run, ignore_errors=True)


if __name__ == "__main__":
    main()
