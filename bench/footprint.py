"""Idle RSS of real proxies, as `make bench` measures it, in about 20 seconds: for changes to start-up.

Starts, on loopback, the e2e harness's processes (tests/e2e/harness.py): a pair of proxies from
snapshot files (host1 runs a, which calls b on host2), a pair under a real control plane
(`glassmesh control`, `glassmesh proxy --control`) with certificate files, and a pair that joined
it with tokens (`glassmesh host add`, `--join`: host identity, certificates by CSR, renewals). Each pair is warmed up like the benchmark
(keep-alive requests, then new connections, through host1's outbound), left idle for a second, then
each proxy's process tree is read from /proc: VmRSS (what `make bench` reports), and from
smaps_rollup the anonymous part (heap, Python objects) apart from file-backed pages (code, shared
libraries). Prints one line per proxy, largest first; `--json` prints the figures as JSON.

    .venv/bin/python bench/footprint.py [--workers N] [--requests N] [--only file|control|joined] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import HttpConn, Mesh, Proc, _children, fresh_ip  # noqa: E402


def tree_kb(proc: Proc) -> dict[str, int]:
    """VmRSS, and smaps_rollup's anonymous and file-backed parts, summed over the proxy's process tree (kB)."""
    pid = proc.popen.pid
    tot = {"rss": 0, "anon": 0, "file": 0, "pss": 0, "procs": 0}
    for p in [pid, *_children(pid)]:
        try:
            rollup = dict(line.split(":", 1) for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()[1:])
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        kb = {k: int(v.split()[0]) for k, v in rollup.items()}
        tot["rss"] += int(status["VmRSS"].split()[0])
        tot["anon"] += kb["Anonymous"]
        tot["file"] += kb["Rss"] - kb["Anonymous"]
        tot["pss"] += kb["Pss"]
        tot["procs"] += 1
    return tot


def warm(outbound: str, requests: int) -> None:
    """Keep-alive requests on 4 connections, then 50 new connections: pools, TLS sessions, the allocator."""
    conns = [HttpConn(outbound, timeout=10) for _ in range(4)]
    for i in range(requests):
        r = conns[i % 4].request("GET", "/hello", {"Host": "b"})
        assert r.status == 200, r
    for c in conns:
        c.close()
    for _ in range(50):
        c = HttpConn(outbound, timeout=10)
        assert c.request("GET", "/hello", {"Host": "b"}).status == 200
        c.close()


def from_files(root: Path, workers: int, requests: int) -> dict[str, dict[str, int]]:
    m = Mesh(root / "files")
    try:
        h1, h2 = m.add_host("host1"), m.add_host("host2")
        h1.client("a")
        h2.http_app("b")
        m.start(workers=workers)
        warm(h1.outbound("a"), requests)
        time.sleep(1)
        return {"file host1 (outbound)": tree_kb(h1.proxy), "file host2 (inbound)": tree_kb(h2.proxy)}  # type: ignore[arg-type]
    finally:
        m.stop()


def under_control(root: Path, workers: int, requests: int) -> dict[str, dict[str, int]]:
    from tests.e2e.test_control_watch import MESH, CHost, Control, b_hosts, wait_for

    m = Mesh(root / "control")
    try:
        cp = Control(m)
        cp.start()
        h1, h2, h3 = CHost(m, "host1", ["a"]), CHost(m, "host2", ["b"]), CHost(m, "host3", ["b"])
        port = 18080
        m.start_app("http", f"{h2.ip}:{port}", "b@host2")
        cp.apply(MESH.format(port=port, ip1=h1.ip, ip2=h2.ip, ip3=h3.ip, host3=""))
        extra = ["--workers", str(workers)] if workers > 1 else []
        for h in (h1, h2):
            h.start(cp.url, extra)
        for h in (h1, h2):
            h.wait_ready()
        wait_for(lambda: b_hosts(cp.snapshot("host1")) == ["host2"], 10, "b@host2 registered")
        want = cp.snapshot("host1")["version"]
        wait_for(lambda: h1.ready()["snapshot_version"] >= want, 5, "host1 has b@host2")
        warm(h1.outbound, requests)
        time.sleep(1)
        return {"control host1 (outbound)": tree_kb(h1.proxy), "control host2 (inbound)": tree_kb(h2.proxy)}  # type: ignore[arg-type]
    finally:
        m.stop()


def joined(root: Path, workers: int, requests: int) -> dict[str, dict[str, int]]:
    """Hosts that joined with a token (`glassmesh host add`, `--join`): mTLS to the control plane, renewals."""
    from tests.e2e import test_control_join as tj
    from tests.e2e.test_control_join import MESH, Control, join_args, wait_ready

    tj.LEAF_HOURS = 24.0  # the control plane's default (the tests' 16-second leaves renew all the time)
    m = Mesh(root / "joined")
    try:
        cp = Control(m)
        ip1, ip2 = fresh_ip(), fresh_ip()
        cp.post("/v1/apply", {"yaml": MESH.format(port=18080, ip1=ip1, ip2=ip2), "author": "footprint"})
        m.start_app("http", f"{ip2}:18080", "b2")
        extra = ["--workers", str(workers)] if workers > 1 else []
        p1 = m.spawn("proxy host1", [*join_args(cp, cp.add_host("host1", "a"), m.root / "h1"), *extra])
        p2 = m.spawn("proxy host2", [*join_args(cp, cp.add_host("host2", "b"), m.root / "h2"), *extra])
        wait_ready(p1, f"{ip1}:4191")
        wait_ready(p2, f"{ip2}:4191")
        deadline = time.monotonic() + 15
        while HttpConn(f"{ip1}:4140", timeout=10).request("GET", "/", {"Host": "b"}).status != 200:
            assert time.monotonic() < deadline, "b never reachable through host1"
            time.sleep(0.1)
        warm(f"{ip1}:4140", requests)
        time.sleep(1)
        return {"joined host1 (outbound)": tree_kb(p1), "joined host2 (inbound)": tree_kb(p2)}
    finally:
        m.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--only", choices=["file", "control", "joined"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gm-footprint-"))
    out: dict[str, Any] = {}
    try:
        if a.only in (None, "file"):
            out.update(from_files(root, a.workers, a.requests))
        if a.only in (None, "control"):
            out.update(under_control(root, a.workers, a.requests))
        if a.only in (None, "joined"):
            out.update(joined(root, a.workers, a.requests))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{'proxy':26s} {'RSS MB':>7s} {'anon':>6s} {'file':>6s} {'PSS':>6s}  procs")
    for name, t in out.items():
        print(f"{name:26s} {t['rss'] / 1000:7.1f} {t['anon'] / 1000:6.1f} {t['file'] / 1000:6.1f} "
              f"{t['pss'] / 1000:6.1f}  {t['procs']}")


if __name__ == "__main__":
    main()
