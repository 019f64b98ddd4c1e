"""The sections of `make bench` beside the main table, each a few glassmesh configurations side by side.

- features: the switches a user would turn on (access log, TLS key log, peer protocol) against the
  defaults (metrics, glassmesh-trail, request ids and retries are always on: they have no switch);
- mesh: a snapshot with 10 endpoints against one with 10,000 (1,000 services x 10 instances that
  are never called, beside the benchmarked service): req/s, latency and RSS;
- scaling: --workers 1 against --workers N (N = the cores the runner may use), as a pair, and the
  outbound proxy alone in front of an nginx inbound, pinned with sched_setaffinity to one core
  (the client, nginx and the app on the others) or free on all of them;
- tcp: redis-benchmark and a Thrift client through a tcp link, beside direct and an nginx stream
  pair (bench/tcplinks.py; ratios there are to the nginx pair).

Every section starts its own processes (on its own ports), runs its configurations alternately in
each repetition (order rotating) so that drift on the shared machine hits them alike, reports
ratios to its first configuration taken within each repetition, and stops its processes at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import measure
import tcplinks
from stack import (
    Procs,
    features_policy,
    filler_services,
    glassmesh_cmd,
    glassmesh_snapshots,
    http_get,
    log,
    render,
    wait_port,
)

SECTIONS = ["features", "mesh", "scaling", "tcp", "balance"]
GM_KEYS = ["GM_OUT", "GM_IN", "GM_ADMIN_IN", "GM_OUT_INBOUND", "GM_ADMIN_OUT", "GM_TOUT"]
SLOT_BASE = 2000          # section slot k: every glassmesh port + 2000 + 10k (20411.., 21411..)
NGX_ISO = {"NGX_IN": 20602, "NGX_TIN": 21602}


def slot_ports(pp: dict[str, int], k: int) -> dict[str, int]:
    """The main table's ports with slot k's glassmesh block (and the isolated nginx inbound)."""
    q = dict(pp)
    for key in GM_KEYS:
        q[key] = pp[key] + SLOT_BASE + 10 * k
    off = pp["UP"] - 18080          # PORT_OFFSET
    q.update({k2: v + off for k2, v in NGX_ISO.items()})
    return q


# Slots per section (fixed, so that ports can be checked before anything starts).
SLOTS = {"features": [1, 2, 3, 4, 11, 14, 16, 17], "mesh": [5, 6], "scaling": [7, 8, 9, 10], "tcp": [], "balance": [12, 13]}


def ports_needed(pp: dict[str, int], sections: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in sections:
        for k in SLOTS[s]:
            q = slot_ports(pp, k)
            out.update({f"{key}_{k}": q[key] for key in GM_KEYS})
        if s == "scaling":
            out.update({f"ISO_{key}": slot_ports(pp, 0)[key] for key in NGX_ISO})
        if s == "tcp":
            out.update(tcplinks.ports(pp))
    return out


@dataclass
class Ctx:
    S: dict
    procs: Procs
    run: Path
    certs: Path
    pp: dict[str, int]
    sampler: Any
    raw: Any


@dataclass
class Variant:
    key: str
    label: str
    http_port: int
    proxies: list[str]
    wait_ports: list[int]
    app: list[str] = field(default_factory=lambda: ["upstream"])
    proxy_cpus: set[int] | None = None     # pinning during its runs (None: free)
    load_cpus: set[int] | None = None
    admin_ports: dict[str, int] = field(default_factory=dict)   # proxy name -> admin port
    failed: str | None = None
    info: dict = field(default_factory=dict)
    slot: int = -1                                  # its ports (slot_ports); -1: not a start_pair pair
    restart: Callable[[int], Variant] | None = None  # the same pair started anew on a slot (alternate(fresh=True))


# ------------------------------------------------------------------ helpers

def start_pair(ctx: Ctx, key: str, label: str, slot: int, *, workers: int = 1, extra: list[str] | None = None,
               extra_in: list[str] | None = None, cmd: list[str] | None = None, env: dict[str, str] | None = None,
               **snapkw: Any) -> Variant:
    """A glassmesh pair (bout -> bin) on slot's ports; waits until GET / answers "ok"."""
    q = slot_ports(ctx.pp, slot)
    d = ctx.run / key
    n_out, n_in = f"{key}_out", f"{key}_in"
    v = Variant(key, label, q["GM_OUT"], [n_out, n_in], [q["GM_OUT"], q["GM_IN"], q["GM_ADMIN_IN"],
                q["GM_OUT_INBOUND"], q["GM_ADMIN_OUT"]], admin_ports={n_out: q["GM_ADMIN_OUT"], n_in: q["GM_ADMIN_IN"]})
    try:
        p_out, p_in = glassmesh_snapshots(d, ctx.certs, q, **snapkw)
    except Exception as e:  # noqa: BLE001
        v.failed = f"snapshots: {type(e).__name__}: {e}"
        return v
    v.info["snapshot_bytes"] = p_out.stat().st_size
    gm = (cmd or glassmesh_cmd()) + ["proxy", "--workers", str(workers)]
    t0 = time.time()
    penv = {**os.environ, **env} if env else None
    ctx.procs.start(n_in, gm + ["--config", str(p_in)] + (extra_in if extra_in is not None else extra or []), env=penv)
    ctx.procs.start(n_out, gm + ["--config", str(p_out)] + (extra or []), env=penv)
    wait_up(ctx, v, t0)
    v.slot = slot
    v.restart = partial(start_pair, ctx, key, label, workers=workers, extra=extra, extra_in=extra_in, cmd=cmd,
                        env=env, **snapkw)
    return v


def start_out_only(ctx: Ctx, key: str, label: str, slot: int, workers: int, upstream: int) -> Variant:
    """The outbound proxy alone: bout -> (mTLS, peer_protocol http1) -> an nginx inbound -> app."""
    q = slot_ports(ctx.pp, slot)
    name = f"{key}_out"
    v = Variant(key, label, q["GM_OUT"], [name], [q["GM_OUT"], q["GM_OUT_INBOUND"], q["GM_ADMIN_OUT"]],
                admin_ports={name: q["GM_ADMIN_OUT"]})
    p_out, _ = glassmesh_snapshots(ctx.run / key, ctx.certs, q, peer_protocol="http1",
                                   up_address=f"127.0.0.1:{upstream}", tcp=False)
    t0 = time.time()
    ctx.procs.start(name, glassmesh_cmd() + ["proxy", "--workers", str(workers), "--config", str(p_out)])
    wait_up(ctx, v, t0)
    return v


def wait_up(ctx: Ctx, v: Variant, t0: float, limit: float = 40) -> None:
    until = t0 + limit
    for port in v.wait_ports:
        while not wait_port(port, min(until, time.time() + 0.5)):
            dead = [n for n in v.proxies if not ctx.procs.alive(n)]
            if dead or time.time() >= until:
                v.failed = (f"{dead[0]} exited rc={ctx.procs.p[dead[0]].returncode}: {ctx.procs.log_tail(dead[0])}"
                            if dead else f"port {port} not listening after {limit:.0f}s")
                return
    v.info["listening_s"] = round(time.time() - t0, 2)
    try:
        st, hdrs, body = http_get(v.http_port, "/")
    except OSError as e:
        v.failed = f"GET / failed: {e}"
        return
    if st != 200 or body != b"ok\n":
        h = {k.lower(): x for k, x in hdrs.items()}
        v.failed = f"GET / answered {st} {body[:200]!r} {h.get('glassmesh-error', '')}".strip()


def all_cpus() -> set[int]:
    return set(os.sched_getaffinity(0))


def _unix_paths_by_inode() -> dict[int, str]:
    out = {}
    try:
        for line in open("/proc/net/unix").read().splitlines()[1:]:
            f = line.split()
            if len(f) >= 8:
                out[int(f[6])] = f[7]
    except (OSError, ValueError):
        pass
    return out


def worker_requests(ctx: Ctx, name: str, side: str) -> dict[int, int]:
    """Requests served so far by each worker of a multi-worker proxy, {pid: n}, read from each worker's
    own admin socket (the supervisor merges the same documents for /metrics). {} if unreadable."""
    if name not in ctx.procs.p:
        return {}
    sup = ctx.procs.p[name].pid
    by_inode = _unix_paths_by_inode()
    out: dict[int, int] = {}
    for pid in measure.tree(sup):
        if pid == sup:
            continue
        path = None
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                m = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
                if m and re.search(r"/worker-\d+\.sock$", by_inode.get(int(m.group(1)), "")):
                    path = by_inode[int(m.group(1))]
                    break
        except OSError:
            continue
        if path is None:
            continue
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"GET /stats.json HTTP/1.1\r\nhost: worker\r\nconnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            s.close()
            doc = json.loads(data.partition(b"\r\n\r\n")[2])
            out[pid] = sum(sum(ls["status"]) for ls in doc["links"] if ls["side"] == side)
        except (OSError, ValueError, KeyError):
            continue
    return out


def _shares(counts: dict[Any, float]) -> list[float]:
    tot = sum(counts.values())
    return sorted((round(100 * c / tot, 1) for c in counts.values()), reverse=True) if tot > 0 else []


def alternate(ctx: Ctx, variants: list[Variant], rows: list[str], *, per_worker: bool = False,
              fresh: bool = False) -> dict:
    """Warm each variant, then REPS repetitions of every row over every variant (order rotating).

    fresh: every repetition after the first starts each pair anew on the next one's ports (and warms it),
    so that a ratio is not one pair of processes on its ports against another for the whole run. A pair
    keeps whatever it drew at start (where the scheduler puts it against the others, the layout of its
    heap) for its whole life: with pairs started once, the trace ring's column read 0.93x in one run and
    0.98x in the next, on a quiet machine. And an A/A run (BENCH_RING_COLUMN=1: that column a copy of
    `defaults`), started anew each time on the same ports, read 0.97x: the second pair was faster in
    every repetition. Rotating the ports spreads that over the columns.
    """
    S, procs = ctx.S, ctx.procs
    runs: dict[str, dict[str, list]] = {r: {v.key: [] for v in variants} for r in rows}
    free = all_cpus()

    def one(v: Variant, conns: int, dur: int, tag: str) -> dict:
        if v.proxy_cpus is not None:
            measure.pin(procs, v.proxies, v.proxy_cpus)
            measure.pin(procs, v.app, v.load_cpus or free)
        cpus = ",".join(map(str, sorted(v.load_cpus))) if v.load_cpus else None
        before = {n: worker_requests(ctx, n, "outbound" if n.endswith("_out") else "inbound")
                  for n in v.proxies} if per_worker else {}
        ctx.sampler.watch(v.proxies)
        try:
            r = measure.wrk(procs, v.http_port, conns, dur, v.proxies, raw_log=ctx.raw, tag=tag, app=v.app,
                            cpus=cpus, per_pid=per_worker)
        finally:
            ctx.sampler.watch([])
            if v.proxy_cpus is not None:
                measure.pin(procs, v.proxies + v.app, free)
        if per_worker and not r.get("error"):
            wr = {}
            for n in v.proxies:
                after = worker_requests(ctx, n, "outbound" if n.endswith("_out") else "inbound")
                if after and before.get(n):
                    wr[n] = {str(p): after[p] - before[n].get(p, 0) for p in after}
            r["worker_requests"] = wr
            r["worker_req_shares"] = {n: _shares(x) for n, x in wr.items()}
            r["worker_cpu_shares"] = {}
            for n, per in (r.get("pid_cpu_s") or {}).items():
                sup = str(procs.p[n].pid)
                workers = {p: c for p, c in per.items() if p != sup} or per
                r["worker_cpu_shares"][n] = _shares(workers)
        if not r.get("error") and r.get("proxy_cpu_cores"):
            r["rps_per_proxy_core"] = round(r["rps"] / r["proxy_cpu_cores"], 1)
        r["load_cpu_cores"] = round((r.get("client_cpu_cores") or 0) + (r.get("app_cpu_cores") or 0), 3)
        return r

    for v in variants:
        if not v.failed:
            r = one(v, 32, max(1, int(S["warm"])), f"{v.key} warm")
            if r.get("error"):
                v.failed = f"warm-up: {r['error']}"
            log(f"  warm {v.key:14s}", brief(r))
    time.sleep(1)
    for v in variants:
        v.info["rss_idle_mb"] = {n: round(measure.rss_mb(procs, n), 1) for n in v.proxies}
        v.info["pss_idle_mb"] = {n: round(measure.pss_mb(procs, n), 1) for n in v.proxies}
    home = {v.key: v.slot for v in variants}  # each pair's first ports; repetition r moves pairs r along
    for rep in range(S["reps"]):
        if fresh and rep:
            again = [v for v in variants if not v.failed and v.restart is not None]
            slots = [home[v.key] for v in again]
            for v in again:
                procs.stop(v.proxies)
            for i, v in enumerate(again):
                assert v.restart is not None
                nv = v.restart(slots[(i + rep) % len(slots)])
                v.slot, v.http_port, v.wait_ports, v.admin_ports, v.failed = (
                    nv.slot, nv.http_port, nv.wait_ports, nv.admin_ports, nv.failed)
            for v in again:
                if not v.failed:
                    r = one(v, 32, max(1, int(S["warm"])), f"{v.key} warm rep{rep + 1}")
                    if r.get("error"):
                        v.failed = f"warm-up after a restart: {r['error']}"
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for row in rows:
            for v in order:
                if v.failed:
                    continue
                gone = [n for n in v.proxies if not procs.alive(n)]
                if gone:
                    v.failed = f"{gone[0]} exited rc={procs.p[gone[0]].returncode}: {procs.log_tail(gone[0])}"
                    continue
                r = one(v, 1 if row == "c1" else 32, S["dur"], f"{v.key} {row}")
                r["rep"] = rep
                runs[row][v.key].append(r)
                log(f"  rep{rep + 1} {row:4s} {v.key:14s}", brief(r))
    for v in variants:
        v.info["rss_peak_mb"] = {n: round(ctx.sampler.peak.get(n, float("nan")), 1) for n in v.proxies}
    return runs


def brief(r: dict) -> str:
    if r.get("error"):
        return f"ERROR {r['error']}"
    s = (f"{r['rps']:>9,.0f} req/s p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} ms "
         f"cpu {r['proxy_cpu_us_per_req']} us/req, proxy {r['proxy_cpu_cores']:.2f} cores")
    if r.get("worker_req_shares"):
        s += f" worker req % {r['worker_req_shares']}"
    return s


def _log_text(ctx: Ctx, name: str) -> str:
    try:
        return (ctx.run / f"{name}.log").read_text(errors="replace")[:4000]
    except OSError:
        return ""


def _finish(ctx: Ctx, name: str, title: str, intro: list[str], variants: list[Variant], runs: dict,
            metrics: list, notes: list[str]) -> dict:
    paths = sorted({m.group(1) for v in variants for n in v.proxies
                    if (m := re.search(r"hot path: (\w+)", _log_text(ctx, n)))})
    if paths:
        notes.append(f"glassmesh hot path (from the proxies' start-up lines): {', '.join(paths)}")
    ctx.procs.stop([n for v in variants for n in v.proxies])
    info_rows = {v.key: [dict(v.info, rep=0)] for v in variants}
    for v in variants:
        idle = [x for x in v.info.get("rss_idle_mb", {}).values() if x == x]
        peak = [x for x in v.info.get("rss_peak_mb", {}).values() if x == x]
        info_rows[v.key][0]["rss_idle_max_mb"] = max(idle) if idle else None
        info_rows[v.key][0]["rss_peak_max_mb"] = max(peak) if peak else None
        pss = [x for x in v.info.get("pss_idle_mb", {}).values() if x == x and x > 0]
        info_rows[v.key][0]["pss_idle_max_mb"] = max(pss) if pss else None
        for n, x in v.info.get("rss_idle_mb", {}).items():
            info_rows[v.key][0][f"rss_idle_{n.rsplit('_', 1)[1]}_mb"] = x
        if v.failed:
            notes.append(f"**{v.label} failed**: {v.failed}")
    runs = dict(runs, info=info_rows)
    return {"name": name, "title": title, "intro": intro, "base": variants[0].key,
            "variants": [{"key": v.key, "label": v.label, "failed": v.failed, "info": v.info} for v in variants],
            "runs": runs, "metrics": metrics, "notes": notes}


# (label, better, row, field, format, mode): mode "ratio" = value (ratio to the first column),
# "diff" = value (difference to the first column, in the value's unit), "" = value only.
LOAD_METRICS = [
    ("req/s, 32 connections", "higher", "c32", "rps", "int", "ratio"),
    ("p50 ms, 32 connections", "lower", "c32", "p50_ms", "ms", "ratio"),
    ("p99 ms, 32 connections", "lower", "c32", "p99_ms", "ms", "ratio"),
    ("proxy CPU us per request, 32 conns", "lower", "c32", "proxy_cpu_us_per_req", "1", "ratio"),
]
C1_METRICS = [
    ("p50 us, 1 connection", "lower", "c1", "p50_us", "int", "diff"),
    ("p99 ms, 1 connection", "lower", "c1", "p99_ms", "ms", "ratio"),
]


def _add_us(runs: dict) -> None:
    for per in runs.get("c1", {}).values():
        for r in per:
            if r.get("p50_ms") is not None:
                r["p50_us"] = round(r["p50_ms"] * 1000, 1)


run_tcp = tcplinks.run   # the tcp section lives in its own module


# ------------------------------------------------------------------ features

FEATURES = ["default", "access_log", "keylog", "http1", "policy", "trace_ring", "tap_off", "tap_on"]


def run_features(ctx: Ctx) -> dict:
    want = [f for f in os.environ.get("FEATURES", ",".join(FEATURES)).split(",") if f]
    want = ["default"] + [f for f in want if f in FEATURES and f != "default"]
    d = ctx.run / "features"
    d.mkdir(parents=True, exist_ok=True)
    variants: list[Variant] = []
    logs: dict[str, list[Path]] = {}
    for f in want:
        slot = SLOTS["features"][FEATURES.index(f)]
        if f == "default":
            v = start_pair(ctx, "f_default", "defaults (access log off)", slot)
        elif f == "access_log":
            lo, li = d / "access_bout.log", d / "access_bin.log"
            logs["f_access_log"] = [lo, li]
            v = start_pair(ctx, "f_access_log", "--access-log FILE", slot, extra=["--access-log", str(lo)],
                           extra_in=["--access-log", str(li)])
        elif f == "keylog":
            lo, li = d / "keylog_bout.txt", d / "keylog_bin.txt"
            v = start_pair(ctx, "f_keylog", "--tls-keylog FILE", slot, extra=["--tls-keylog", str(lo)],
                           extra_in=["--tls-keylog", str(li)])
        elif f in ("tap_off", "tap_on"):  # bench/tapped.py: a tap started in each proxy as an ask would
            label = ("tap off (a tap ran and ended)" if f == "tap_off"
                     else "tap on (info): every exchange, --headers --body 1024")
            v = start_pair(ctx, f"f_{f}", label, slot,
                           cmd=[sys.executable, str(Path(__file__).with_name("tapped.py")), f[4:]])
        elif f == "trace_ring":  # always on; the column turns it off, so its ratio is what the ring costs
            # (BENCH_RING_COLUMN=1 leaves it on: an A/A run, whose ratio is the bench's own bias)
            v = start_pair(ctx, "f_no_ring", "trace ring off (GLASSMESH_TRACE_RING=0)", slot,
                           env={"GLASSMESH_TRACE_RING": os.environ.get("BENCH_RING_COLUMN", "0")})
        elif f == "policy":
            v = start_pair(ctx, "f_policy", "traffic policy: 20 routes, 1% split, retry budget, outlier", slot,
                           policy=features_policy())
        else:
            v = start_pair(ctx, "f_http1", '"peer_protocol": "http1"', slot, peer_protocol="http1")
        log(f"  up {v.key:14s}", "FAILED: " + v.failed if v.failed else f"ok ({v.info.get('listening_s')} s)")
        variants.append(v)
    runs = alternate(ctx, variants, ["c32", "c1"], fresh=True)
    _add_us(runs)
    notes = []
    for key, files in logs.items():
        v = next(x for x in variants if x.key == key)
        sizes = []
        for p in files:
            try:
                size = p.stat().st_size
                with open(p, "rb") as fh:
                    lines = sum(1 for _ in fh)
            except OSError:
                continue
            sizes.append((p.name, size, lines))
            p.unlink()
        for name, size, lines in sizes:
            v.info[f"{name}_bytes_per_line"] = round(size / lines, 1) if lines else None
        tot_req = sum(r.get("requests", 0) for per in runs.values() for r in per.get(key, []))
        notes.append("access log: " + ", ".join(f"{n}: {lines:,} lines, {size / 1e6:.1f} MB ({size / max(lines, 1):.0f} "
                                                 f"bytes a line)" for n, size, lines in sizes)
                     + f", for {tot_req:,} measured requests plus the warm-up; deleted after the run")
    notes.append("always on, no switch to turn them off (so not in a column): Prometheus counters and histograms, "
                 "the glassmesh-trail header, x-request-id and traceparent, retry on another endpoint after a "
                 "connect failure or a 502/503/504/421 from a peer (costs nothing unless a request fails), the "
                 "inbound identity check.")
    notes.append("tap: `tap off` is a pair in which a tap was started and stopped (no observer, no recording "
                 "left: what every proxy runs while nobody taps), so its ratios to `defaults` are the noise; "
                 "`tap on` is for information: a tap of every exchange with headers and 1 KiB bodies, each "
                 "exchange's bytes recorded, 200 events a second kept and encoded, the rest counted as dropped.")
    intro = ["Each column is a glassmesh pair (both proxies with the same switch) on its own ports, measured "
             "alternately with the others in every repetition and started anew (then warmed) for each repetition "
             "(with pairs started once, one comparison read 0.93x in a run and 0.98x in the next); ratios are to "
             "`defaults`, taken within each repetition. `--access-log` writes one JSON line per request to a file on each proxy (whole lines written in batches), "
             "as a user would run it; `--tls-keylog` writes TLS secrets only at each handshake (pooled links: "
             "almost never); `peer_protocol: http1` is a TLS connection per request in flight between the "
             "proxies instead of the default multiplexed link. The traffic-policy column gives the outbound "
             "proxy's service 20 routes (each request walks 19 that do not match, on path prefix and method, "
             "to the last), a 99/1 split over two subsets, retries on 503 under a 20% + 10/s budget and "
             "outlier detection (the defaults, without a policy, are P2C and outlier detection already)."]
    metrics = LOAD_METRICS + C1_METRICS
    return _finish(ctx, "features", "Features on and off: what a switch costs", intro, variants, runs, metrics, notes)


# ------------------------------------------------------------------ mesh size

def run_mesh(ctx: Ctx) -> dict:
    sizes = [int(x) for x in os.environ.get("MESH_ENDPOINTS", "10,10000").split(",") if x][:2]
    variants = []
    for size, slot in zip(sizes, SLOTS["mesh"], strict=False):
        filler = filler_services(max(0, size - 2))     # "up" and "bulk" hold one endpoint each
        n_svc = len(filler) + 2
        v = start_pair(ctx, f"m_{size}", f"{size:,} endpoints ({n_svc:,} services)", slot, filler=filler)
        log(f"  up {v.key:14s}", "FAILED: " + v.failed if v.failed else
            f"ok ({v.info.get('listening_s')} s, snapshot {v.info.get('snapshot_bytes', 0) / 1e3:,.0f} kB)")
        variants.append(v)
    runs = alternate(ctx, variants, ["c32", "c1"])
    _add_us(runs)
    metrics = LOAD_METRICS + C1_METRICS + [
        ("proxy RSS MB idle, outbound proxy (bout)", "lower", "info", "rss_idle_out_mb", "1", "diff"),
        ("proxy RSS MB idle, inbound proxy (bin)", "lower", "info", "rss_idle_in_mb", "1", "diff"),
        ("proxy RSS MB peak under load (larger proxy)", "lower", "info", "rss_peak_max_mb", "1", "diff"),
        ("proxy PSS MB idle (larger proxy)", "lower", "info", "pss_idle_max_mb", "1", "diff"),
        ("snapshot file kB (bout)", "", "info", "snapshot_kb", "int", "ratio"),
        ("start to listening, s (both proxies)", "lower", "info", "listening_s", "2", "diff"),
    ]
    for v in variants:
        v.info["snapshot_kb"] = round(v.info.get("snapshot_bytes", 0) / 1e3, 1)
    intro = [f"Two glassmesh pairs, the same but for the size of both proxies' snapshots: `up` and `bulk` "
             f"(one live endpoint each) plus services of 10 endpoints that are never called "
             f"(addresses 127.2.x.y:4143 over 200 hosts, never dialed) up to {sizes[-1]:,} endpoints in all. "
             f"Target: the large one serves as fast (ratio ~1.00x) and within 20 MB of the small one's RSS. "
             f"RSS is each proxy's process tree (VmRSS): idle after the warm-up, peak sampled every 0.2 s under load."]
    return _finish(ctx, "mesh", "Mesh size: 10 endpoints against 10,000", intro, variants, runs, metrics, [])


# ------------------------------------------------------------------ scaling

def run_scaling(ctx: Ctx) -> dict:
    cpus = sorted(all_cpus())
    n = len(cpus)
    wlist = sorted({int(x) for x in os.environ.get("SCALE_WORKERS", f"1,{max(n, 2)}").split(",") if x})[:2]
    w1, wn = wlist[0], wlist[-1]
    slots = SLOTS["scaling"]
    notes: list[str] = []
    # Part 1: the pair, as `make bench` runs it, --workers w1 vs wn on both proxies, free on all cores.
    pair = []
    for w, slot in ((w1, slots[0]), (wn, slots[1])):
        v = start_pair(ctx, f"s_pair_w{w}", f"pair, --workers {w}", slot, workers=w)
        log(f"  up {v.key:14s}", "FAILED: " + v.failed if v.failed else f"ok ({v.info.get('listening_s')} s)")
        pair.append(v)
    # Part 2: the outbound proxy alone in front of an nginx inbound (C, cheap): the proxy is the bottleneck.
    iso_dir = ctx.run / "scaling_nginx"
    iso_dir.mkdir(parents=True, exist_ok=True)
    q = slot_ports(ctx.pp, 0)
    ctx.procs.start("s_nginx_in", ["nginx", "-p", f"{iso_dir}/", "-e", f"{iso_dir}/nginx.stderr", "-c",
                                   render("nginx_inbound.conf", iso_dir, ctx.certs, q), "-g", "daemon off;"])
    iso: list[Variant] = []
    if not wait_port(q["NGX_IN"], time.time() + 10):
        notes.append(f"nginx inbound for the isolated runs did not listen: {ctx.procs.log_tail('s_nginx_in')}")
    else:
        base = {}
        for w, slot in ((w1, slots[2]), (wn, slots[3])):
            base[w] = start_out_only(ctx, f"s_out_w{w}", "", slot, w, q["NGX_IN"])
            log(f"  up {base[w].key:14s}", "FAILED: " + base[w].failed if base[w].failed
                else f"ok ({base[w].info.get('listening_s')} s)")
        load = ["upstream", "s_nginx_in"]
        if n >= 2:
            one, rest = {cpus[-1]}, set(cpus[:-1])
            for w in (w1, wn):
                b = base[w]
                iso.append(Variant(f"s_out_w{w}_1core", f"outbound alone, --workers {w}, pinned to 1 core",
                                   b.http_port, b.proxies, [], app=load, proxy_cpus=one, load_cpus=rest,
                                   admin_ports=b.admin_ports, failed=b.failed, info=b.info))
        for w in (w1, wn):
            b = base[w]
            iso.append(Variant(f"s_out_w{w}_free", f"outbound alone, --workers {w}, free on {n} cores",
                               b.http_port, b.proxies, [], app=load, admin_ports=b.admin_ports, failed=b.failed,
                               info=dict(b.info)))
        if n < 2:
            notes.append("one core only: the pinned runs were left out")
    m = [
        ("req/s, 32 connections", "higher", "c32", "rps", "int", "ratio"),
        ("p50 ms, 32 connections", "lower", "c32", "p50_ms", "ms", "ratio"),
        ("p99 ms, 32 connections", "lower", "c32", "p99_ms", "ms", "ratio"),
        ("proxy CPU us per request (all proxy processes)", "lower", "c32", "proxy_cpu_us_per_req", "1", "ratio"),
        ("proxy cores busy (CPU s / wall s)", "", "c32", "proxy_cpu_cores", "2", "ratio"),
        ("req/s per busy proxy core", "higher", "c32", "rps_per_proxy_core", "int", "ratio"),
        ("client + nginx(es) cores busy", "", "c32", "load_cpu_cores", "2", "ratio"),
        ("other cores busy (noise)", "", "c32", "other_cpu_cores", "2", ""),
        ("proxy RSS MB idle, larger proxy (process tree: supervisor + workers)", "lower", "info",
         "rss_idle_max_mb", "1", "diff"),
        ("proxy PSS MB idle, larger proxy (pages shared by the workers counted once)", "lower", "info",
         "pss_idle_max_mb", "1", "diff"),
    ]
    if n >= 2:
        m_iso = m + [(f"CPU {cpus[-1]} busy %, every process on it (pinned: the proxy's core)", "", "c32",
                      f"cpu{cpus[-1]}_busy_pct", "1", ""),
                     (f"CPU {cpus[0]} busy %, every process on it (pinned: wrk, nginx, app)", "", "c32",
                      f"cpu{cpus[0]}_busy_pct", "1", "")]
    else:
        m_iso = m
    runs_pair = alternate(ctx, pair, ["c32"], per_worker=True)
    runs_iso = alternate(ctx, iso, ["c32"], per_worker=True) if iso else {"c32": {}}
    ctx.procs.stop(["s_nginx_in"])
    sec_pair = _finish(ctx, "scaling_pair", f"Scaling, 1: the pair with --workers {w1} and {wn}", [
        f"Both proxies of a glassmesh pair with `--workers {w1}` and with `--workers {wn}`, free on all {n} cores "
        f"shared with wrk and the app, measured alternately. The per-worker split is each worker's requests "
        f"(from its own stats document, the ones the supervisor merges into /metrics) and CPU (from /proc)."],
        pair, runs_pair, m, [
            "the inbound proxy's workers share what arrives as proxy-to-proxy connections: SO_REUSEPORT spreads "
            "connections, not requests. A busy multiplexed link opens up to 4 TLS connections and retires "
            "streams after 100 requests so that they spread; before that, one connection per link gave the "
            "inbound split 100/0."])
    sec_pair["per_worker"] = _per_worker(runs_pair)
    ctx.procs.stop([n2 for v in iso for n2 in v.proxies])
    sec_iso = _finish(ctx, "scaling_alone", "Scaling, 2: the outbound proxy alone, pinned and free", [
        f"The proxy under test is glassmesh's outbound proxy alone (`peer_protocol: http1`, mutual TLS to a "
        f"1-worker nginx inbound, then the app): the only Python process in the path. Even so, wrk and the "
        f"two nginx take about as much CPU as the proxy (see `client + nginx(es) cores busy` and the CPU "
        f"busy rows): when the other core is 100 % busy, req/s measures the load side, not the proxy; "
        f"read `req/s per busy proxy core` and CPU per request first. `pinned to 1 core`: every thread of the proxy's processes on CPU {cpus[-1]}, wrk, the "
        f"nginx inbound and the app on CPU(s) {','.join(map(str, cpus[:-1])) or '-'} (sched_setaffinity / "
        f"taskset). `free`: nothing pinned. Ratios are to `--workers {w1}, pinned to 1 core`: the capacity of "
        f"one core."], iso, runs_iso, m_iso, notes)
    sec_iso["per_worker"] = _per_worker(runs_iso)
    return {"name": "scaling", "parts": [sec_pair, sec_iso]}


def _per_worker(runs: dict) -> dict:
    """{variant: {proxy: 'req % a/b, cpu % a/b'}} from the median repetition (the first if only one)."""
    out: dict = {}
    for key, per in runs.get("c32", {}).items():
        good = [r for r in per if not r.get("error")]
        if not good:
            continue
        r = sorted(good, key=lambda x: x["rps"])[len(good) // 2]
        out[key] = {n: {"req_pct": r.get("worker_req_shares", {}).get(n), "cpu_pct": r.get("worker_cpu_shares", {}).get(n),
                        "requests": r.get("worker_requests", {}).get(n)}
                    for n in (r.get("worker_cpu_shares") or {})}
    return out


# ------------------------------------------------------------------ balance: one slow instance among three

APPS = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "apps.py"


def run_balance(ctx: Ctx) -> dict:
    """P2C against round robin, with one of three app instances 20 ms slower (BALANCE_SLOW_MS).

    One outbound proxy per mode sends "up" straight to three instances of the test app (endpoints
    outside the mesh, plain HTTP, so that the balancing under test is the only one on the way).
    """
    import sys

    slow_ms = int(os.environ.get("BALANCE_SLOW_MS", "20"))
    base = slot_ports(ctx.pp, SLOTS["balance"][0])["GM_OUT"] + 5
    app_ports = [base, base + 1, base + 2]
    apps = []
    for i, port in enumerate(app_ports):
        name = f"bal_app{i}"
        extra = ["--delay-ms", str(slow_ms)] if i == 2 else []
        ctx.procs.start(name, [sys.executable, str(APPS), "http", "--listen", f"127.0.0.1:{port}",
                               "--name", name, *extra])
        apps.append(name)
    for port in app_ports:
        wait_port(port, time.time() + 20)
    variants = []
    for mode, slot in zip(("p2c_ewma", "round_robin"), SLOTS["balance"], strict=True):
        q = slot_ports(ctx.pp, slot)
        key = f"b_{mode}"
        d = ctx.run / key
        p_out, _ = glassmesh_snapshots(d, ctx.certs, q, tcp=False, up_address="127.0.0.1:1",
                                       policy={"balance": mode, "outlier": None})
        snap = json.loads(p_out.read_text())
        snap["services"][0]["endpoints"] = [{"address": f"127.0.0.1:{p}", "host": f"app{i}", "mesh": False}
                                            for i, p in enumerate(app_ports)]
        p_out.write_text(json.dumps(snap, indent=2))
        name = f"{key}_out"
        v = Variant(key, f"{'P2C (EWMA)' if mode == 'p2c_ewma' else 'round robin'}, 1 of 3 instances "
                         f"+{slow_ms} ms", q["GM_OUT"], [name], [q["GM_OUT"], q["GM_ADMIN_OUT"]], app=apps,
                    admin_ports={name: q["GM_ADMIN_OUT"]})
        t0 = time.time()
        ctx.procs.start(name, glassmesh_cmd() + ["proxy", "--config", str(p_out)])
        until = t0 + 40
        for port in v.wait_ports:
            if not wait_port(port, until):
                v.failed = f"port {port} not listening"
        variants.append(v)
        log(f"  up {v.key:14s}", "FAILED: " + v.failed if v.failed else "ok")
    runs = alternate(ctx, variants, ["c32"])
    for v in variants:
        # Each proxy's own count of the tries it sent to each instance (its /stats.json endpoint rows).
        try:
            _, _, body = http_get(v.admin_ports[v.proxies[0]], "/stats.json")
            rows = json.loads(body)["endpoints"]
            total = sum(r["requests"] for r in rows) or 1
            v.info["share_of_requests_pct"] = {r["host"]: round(100 * r["requests"] / total, 1) for r in rows}
        except (OSError, ValueError, KeyError) as e:
            v.info["share_of_requests_pct"] = f"unreadable: {e}"
    ctx.procs.stop(apps)
    notes = [f"share of requests by instance: {v.label.split(',')[0]}: {v.info.get('share_of_requests_pct')}"
             for v in variants]
    notes += [f"the slow instance (bal_app2) answers {slow_ms} ms later than the other two; the app is the test "
             "suite's Python HTTP app (tests/e2e/apps.py), so absolute rates are the app's, not the proxy's; "
             "what matters is p50/p99 between the columns"]
    intro = ["One outbound proxy in front of three instances of one service, one of them slow; the same load "
             "(wrk, 32 connections) with `balance: p2c_ewma` (the default) and `balance: round_robin`."]
    return _finish(ctx, "balance", "Balancing with one slow instance of three: P2C against round robin", intro,
                   variants, runs, LOAD_METRICS, notes)
