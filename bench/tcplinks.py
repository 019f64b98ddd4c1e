"""The `tcp` section of `make bench`: real TCP protocols through a tcp link, beside direct and an nginx stream pair.

    client -> (direct | glassmesh tcp link | nginx stream pair) -> app

- redis: `redis-benchmark -q -n N -c 50 -t set,get,lpush` and the same at `-c 1`, against a
  redis-server on loopback (no persistence);
- Thrift: one connection making echo calls (thriftpy2, binary protocol, buffered transport, 64-byte
  payload) for DUR seconds: calls/s and p50 (bench/tools/thrift_echo.py).

glassmesh: host `tout` (local service `client`, a tcp link per destination) and host `tin` (local
tcp services `redis` and `thrift`), mutual TLS between them. nginx: bench/peers/nginx_stream_*.conf,
ssl on both legs, TLS 1.3, client certificates, one worker each; in the stream module every client
connection is one upstream TLS connection. Configurations alternate within each repetition (order
rotating); ratios are to the nginx pair, taken within each repetition.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import measure
from stack import TOOLS, glassmesh_cmd, log, make_certs, render, wait_port

BASE = {
    "REDIS": 23000, "THRIFT": 23001,
    "TL_OUT_INBOUND": 23010, "TL_ADMIN_OUT": 23011, "TL_IN": 23012, "TL_ADMIN_IN": 23013,
    "TL_REDIS": 23014, "TL_THRIFT": 23015,
    "NS_OUT_REDIS": 23020, "NS_OUT_THRIFT": 23021, "NS_IN_REDIS": 23022, "NS_IN_THRIFT": 23023,
}
TESTS = ["SET", "GET", "LPUSH"]
_RB = re.compile(r"([A-Z_]+)(?: \([^)]*\))?: ([\d.]+) requests per second, p50=([\d.]+) msec")


def ports(pp: dict[str, int]) -> dict[str, int]:
    """This section's ports, moved by PORT_OFFSET as the others are."""
    off = pp["UP"] - 18080
    return {f"TCP_{k}": v + off for k, v in BASE.items()}


def _q(pp: dict[str, int]) -> dict[str, int]:
    return {k[4:]: v for k, v in ports(pp).items()}


def snapshots(d: Path, certs: Path, q: dict[str, int], peer_protocol: str = "mux") -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    a = lambda port: f"127.0.0.1:{port}"  # noqa: E731
    rel = os.path.relpath(certs, d)
    c = lambda f: f"{rel}/{f}"  # noqa: E731
    tin_ep = [{"address": a(q["TL_IN"]), "host": "tin"}]
    base = {"version": 1, "trust_domain": "glassmesh.local", "trust_bundle": c("ca.crt")}
    tout = dict(base, host="tout", peer_protocol=peer_protocol, inbound=a(q["TL_OUT_INBOUND"]),
                admin=a(q["TL_ADMIN_OUT"]),
                local_services=[{"name": "client", "protocol": "http", "instances": [],
                                 "cert": c("client.crt"), "key": c("client.key")}],
                services=[{"name": n, "protocol": "tcp", "endpoints": tin_ep} for n in ("redis", "thrift")],
                tcp_links=[{"source": "client", "listen": a(q["TL_REDIS"]), "destination": "redis"},
                           {"source": "client", "listen": a(q["TL_THRIFT"]), "destination": "thrift"}])
    tin = dict(base, host="tin", inbound=a(q["TL_IN"]), admin=a(q["TL_ADMIN_IN"]),
               local_services=[{"name": n, "protocol": "tcp", "instances": [a(q[n.upper()])],
                                "cert": c(f"{n}.crt"), "key": c(f"{n}.key")} for n in ("redis", "thrift")],
               services=[], tcp_links=[])
    p_out, p_in = d / "tout.json", d / "tin.json"
    p_out.write_text(json.dumps(tout, indent=2) + "\n")
    p_in.write_text(json.dumps(tin, indent=2) + "\n")
    return p_out, p_in


def redis_benchmark(ctx: Any, port: int, conns: int, n: int, proxies: list[str], tag: str) -> dict:
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-q", "-n", str(n), "-c", str(conns),
            "-t", "set,get,lpush"]
    with measure.Window(ctx.procs, proxies, ["tl_redis"]) as w:
        rc, out, err = ctx.procs.run_bounded(argv, timeout=120)
    ctx.raw.write(f"=== tcp {tag} {' '.join(argv)} rc={rc}\n{out}\n{err}\n")
    ctx.raw.flush()
    found = {m.group(1): (float(m.group(2)), float(m.group(3))) for m in _RB.finditer(out.replace("\r", "\n"))}
    if rc != 0 or any(t not in found for t in TESTS):
        return {"error": f"redis-benchmark rc={rc}: {(err or out).strip()[-200:]}"}
    r: dict[str, Any] = {}
    for t in TESTS:
        r[f"{t.lower()}_ops_s"], r[f"{t.lower()}_p50_ms"] = found[t]
    # All three tests together: total operations over total time.
    r["ops_s"] = round(len(TESTS) * n / sum(n / found[t][0] for t in TESTS), 1)
    r.update(w.fields())
    r["proxy_cpu_us_per_op"] = round(w.proxy_cpu / (len(TESTS) * n) * 1e6, 2) if proxies else None
    return r


def thrift_bench(ctx: Any, port: int, seconds: int, proxies: list[str], tag: str) -> dict:
    argv = [sys.executable, str(TOOLS / "thrift_echo.py"), "bench", str(port), str(seconds)]
    with measure.Window(ctx.procs, proxies, ["tl_thrift"]) as w:
        rc, out, err = ctx.procs.run_bounded(argv, timeout=seconds + 60)
    ctx.raw.write(f"=== tcp {tag} {' '.join(argv)} rc={rc}\n{out}\n{err}\n")
    ctx.raw.flush()
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"thrift client rc={rc}: {(err or out).strip()[-200:]}"}
    r.update(w.fields())
    r["proxy_cpu_us_per_call"] = round(w.proxy_cpu / max(r["calls"], 1) * 1e6, 2) if proxies else None
    if r.get("mismatches"):
        r["error"] = f"{r['mismatches']} echoes came back different"
    return r


def _metric(port: int, name: str, **labels: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as f:
            text = f.read().decode()
    except OSError:
        return None
    want = [f'{k}="{v}"' for k, v in labels.items()]
    tot = None
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in want):
            tot = (tot or 0.0) + float(line.rsplit(" ", 1)[1])
    return tot


def brief(r: dict) -> str:
    if r.get("error"):
        return f"ERROR {r['error']}"
    if "calls_s" in r:
        return f"{r['calls_s']:>9,.0f} calls/s p50 {r['p50_us']:.0f} us"
    return (f"{r['ops_s']:>9,.0f} ops/s  " + "  ".join(f"{t} {r[t.lower() + '_ops_s']:,.0f} p50 "
                                                      f"{r[t.lower() + '_p50_ms']:.3f}" for t in TESTS)
            + (f"  cpu {r['proxy_cpu_us_per_op']} us/op" if r.get("proxy_cpu_us_per_op") else ""))


def run(ctx: Any) -> dict:
    S, procs = ctx.S, ctx.procs
    q = _q(ctx.pp)
    d = ctx.run / "tcp"
    d.mkdir(parents=True, exist_ok=True)
    certs = d / "certs"
    make_certs(certs, ["client", "redis", "thrift"])
    n50 = int(os.environ.get("TCP_REDIS_N", "10000" if S["quick"] else "20000"))
    n1 = int(os.environ.get("TCP_REDIS_N1", "3000" if S["quick"] else "10000"))
    secs = int(os.environ.get("TCP_THRIFT_S", str(min(S["dur"], 5))))
    notes: list[str] = []
    failed: dict[str, str] = {}

    def up(name: str, argv: list[str], port: int) -> str | None:
        procs.start(name, argv)
        if not wait_port(port, time.time() + 30):
            return f"{name} did not listen on {port}: {procs.log_tail(name)}"
        return None

    why = (up("tl_redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(q["REDIS"]), "--save", "",
                           "--appendonly", "no", "--dir", str(d), "--protected-mode", "no"], q["REDIS"])
           or up("tl_thrift", [sys.executable, str(TOOLS / "thrift_echo.py"), "serve", str(q["THRIFT"])],
                 q["THRIFT"]))
    if why:
        raise SystemExit(f"bench tcp: {why}")
    # glassmesh pair
    p_out, p_in = snapshots(d / "glassmesh", certs, q)
    gm = glassmesh_cmd() + ["proxy", "--workers", "1"]
    procs.start("tl_gm_in", gm + ["--config", str(p_in)])
    procs.start("tl_gm_out", gm + ["--config", str(p_out)])
    for port in (q["TL_ADMIN_IN"], q["TL_ADMIN_OUT"], q["TL_REDIS"], q["TL_THRIFT"]):
        if not wait_port(port, time.time() + 40):
            failed["glassmesh"] = (f"port {port} not listening: {procs.log_tail('tl_gm_out')} "
                                   f"{procs.log_tail('tl_gm_in')}")
            break
    # nginx stream pair
    pq = dict(ctx.pp, **q)
    for name, conf in (("tl_ngx_in", "nginx_stream_inbound.conf"), ("tl_ngx_out", "nginx_stream_outbound.conf")):
        procs.start(name, ["nginx", "-p", f"{d}/", "-e", f"{d}/{name}.stderr", "-c", render(conf, d, certs, pq),
                           "-g", "daemon off;"])
    for port in (q["NS_OUT_REDIS"], q["NS_OUT_THRIFT"], q["NS_IN_REDIS"], q["NS_IN_THRIFT"]):
        if not wait_port(port, time.time() + 10):
            failed["nginx"] = f"port {port} not listening: {procs.log_tail('tl_ngx_out')} {procs.log_tail('tl_ngx_in')}"
            break
    variants = [
        {"key": "direct", "label": "direct", "redis": q["REDIS"], "thrift": q["THRIFT"], "proxies": []},
        {"key": "nginx", "label": "nginx stream pair", "redis": q["NS_OUT_REDIS"], "thrift": q["NS_OUT_THRIFT"],
         "proxies": ["tl_ngx_out", "tl_ngx_in"]},
        {"key": "glassmesh", "label": "glassmesh tcp link", "redis": q["TL_REDIS"], "thrift": q["TL_THRIFT"],
         "proxies": ["tl_gm_out", "tl_gm_in"]},
    ]
    for v in variants:
        v["failed"] = failed.get(v["key"])
    rows = {"redis50": (50, n50), "redis1": (1, n1), "thrift1": None}
    runs: dict[str, dict[str, list]] = {r: {v["key"]: [] for v in variants} for r in rows}
    for v in variants:   # warm-up: connections, the link's first TLS connection, redis' allocations
        if v["failed"]:
            continue
        r = redis_benchmark(ctx, v["redis"], 50, 2000, v["proxies"], f"{v['key']} warm")
        if r.get("error"):
            v["failed"] = f"warm-up: {r['error']}"
        log(f"  warm {v['key']:10s}", brief(r))
    hs0 = _metric(q["TL_ADMIN_OUT"], "glassmesh_tls_handshakes_total", side="outbound", destination="redis") or 0
    for rep in range(S["reps"]):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for row, spec in rows.items():
            for v in order:
                if v["failed"]:
                    continue
                gone = [n for n in v["proxies"] if not procs.alive(n)]
                if gone:
                    v["failed"] = f"{gone[0]} exited: {procs.log_tail(gone[0])}"
                    continue
                tag = f"{v['key']} {row}"
                if spec is None:
                    r = thrift_bench(ctx, v["thrift"], secs, v["proxies"], tag)
                else:
                    r = redis_benchmark(ctx, v["redis"], spec[0], spec[1], v["proxies"], tag)
                r["rep"] = rep
                runs[row][v["key"]].append(r)
                log(f"  rep{rep + 1} {row:8s} {v['key']:10s}", brief(r))
    hs = _metric(q["TL_ADMIN_OUT"], "glassmesh_tls_handshakes_total", side="outbound", destination="redis")
    conns = _metric(q["TL_ADMIN_OUT"], "glassmesh_tcp_connections_total", side="outbound", destination="redis")
    if hs is not None:
        notes.append(f"glassmesh: {hs - hs0:.0f} TLS handshakes between the proxies for the measured redis runs "
                     f"({conns or 0:.0f} client connections carried by the redis link in all, warm-up included); "
                     f"the nginx stream pair makes one upstream TLS connection per client connection")
    for name in ("tl_gm_out", "tl_gm_in"):
        m = re.search(r"hot path: (\w+)", (d.parent / f"{name}.log").read_text(errors="replace")
                      if (d.parent / f"{name}.log").exists() else "")
        if m:
            notes.append(f"glassmesh hot path ({name}): {m.group(1)}")
            break
    procs.stop(["tl_gm_out", "tl_gm_in", "tl_ngx_out", "tl_ngx_in", "tl_redis", "tl_thrift"])
    shutil.rmtree(certs, ignore_errors=True)
    metrics = []
    for row, c in (("redis50", 50), ("redis1", 1)):
        n = n50 if c == 50 else n1
        metrics.append((f"redis ops/s, {c} conn (set+get+lpush, -n {n})", "higher", row, "ops_s", "int", "ratio"))
        for t in TESTS:
            metrics.append((f"  {t} ops/s, {c} conn", "higher", row, f"{t.lower()}_ops_s", "int", "ratio"))
            metrics.append((f"  {t} p50 ms, {c} conn", "lower", row, f"{t.lower()}_p50_ms", "ms", "ratio"))
        metrics.append((f"proxy CPU us per redis op, {c} conn", "lower", row, "proxy_cpu_us_per_op", "1", "ratio"))
    metrics += [
        ("Thrift calls/s, 1 connection", "higher", "thrift1", "calls_s", "int", "ratio"),
        ("Thrift p50 us, 1 connection", "lower", "thrift1", "p50_us", "int", "ratio"),
        ("Thrift p99 us, 1 connection", "lower", "thrift1", "p99_us", "int", "ratio"),
        ("proxy CPU us per Thrift call", "lower", "thrift1", "proxy_cpu_us_per_call", "1", "ratio"),
    ]
    intro = [f"Real TCP protocols through a tcp link: `redis-benchmark -q -n {n50} -c 50 -t set,get,lpush` (and "
             f"`-n {n1} -c 1`) against redis-server, and a Thrift echo client (thriftpy2, binary protocol, "
             f"buffered transport, 64-byte payload) making calls on one connection for {secs} s. Columns: the "
             f"app directly; an nginx `stream` mTLS pair (TLS 1.3, client certificates, one worker each, a TLS "
             f"connection per client connection); a glassmesh pair (one tcp link per destination, one worker "
             f"each). Ratios are to the nginx stream pair, taken within each repetition."]
    return {"name": "tcp", "title": "TCP links: redis and Thrift through a tcp link", "intro": intro,
            "base": "nginx",
            "variants": [{"key": v["key"], "label": v["label"], "failed": v["failed"], "info": {}} for v in variants],
            "runs": runs, "metrics": metrics, "notes": notes + [f"**{v['label']} failed**: {v['failed']}"
                                                               for v in variants if v["failed"]]}
