#!/usr/bin/env python3
"""`make bench`: glassmesh beside direct, the nginx pair and the HAProxy pair.

Topology, for every configuration (all on 127.0.0.1):

  client (wrk / rate client / tcp client) -> outbound proxy -> mTLS (TLS 1.3, ECDSA P-256)
      -> inbound proxy -> app (1-worker nginx: "ok\\n" on /, 1 MiB on /big; or the TCP source)

Everything is measured in the same run; configurations alternate inside each repetition (and the
order rotates between repetitions) so that drift on a shared machine hits them alike. See
docs/bench.md for what each row means. Knobs are environment variables (see `settings`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402
import report  # noqa: E402
import sections  # noqa: E402
from stack import (  # noqa: E402
    TOOLS,
    Config,
    Procs,
    check_ports_free,
    glassmesh_cmd,
    glassmesh_snapshots,
    http_get,
    log,
    make_certs,
    ports,
    render,
    wait_port,
)

ROWS = ["c32", "c1", "conn", "big", "rate", "tcp"]
PARTS = ["table", *sections.SECTIONS]   # what a run measures: the main table, then each section
BIG = 1 << 20


def settings(args: argparse.Namespace) -> dict:
    e = os.environ.get
    quick = args.quick or e("QUICK", "") not in ("", "0")
    S = {
        "quick": quick,
        "dur": int(e("DUR", "3" if quick else "10")),
        "reps": int(e("REPS", "1" if quick else "3")),
        "warm": float(e("WARM", "1" if quick else "3")),
        "rate": int(e("RATE", "2000")),
        "rate_conns": int(e("RATE_CONNS", "64")),
        "big_conns": int(e("BIG_CONNS", "4")),
        "tcp_bytes": int(e("TCP_BYTES", str((256 << 20) if quick else (1 << 30)))),
        "tcp_timeout": float(e("TCP_TIMEOUT", "120")),
        "gm_workers": int(e("GM_WORKERS", "1")),
        "port_offset": int(e("PORT_OFFSET", "0")),
        "configs": [c for c in (args.configs or e("CONFIGS", ",".join(report.COLS))).split(",") if c],
        "hold": float(e("HOLD", "0")),
        "skip": {r for r in ROWS if e(f"SKIP_{r.upper()}", "") not in ("", "0")},
        "only": [p for p in (args.only or e("ONLY", ",".join(PARTS))).replace(" ", "").split(",") if p],
    }
    bad = set(S["only"]) - set(PARTS)
    if bad:
        raise SystemExit(f"bench: unknown part(s) {sorted(bad)} in --only/ONLY; known: {PARTS}")
    S["only"] = [p for p in PARTS if p in S["only"]]
    unknown = set(S["configs"]) - set(report.COLS)
    if unknown:
        raise SystemExit(f"bench: unknown config(s) {sorted(unknown)}; known: {report.COLS}")
    if "direct" not in S["configs"]:
        S["configs"].insert(0, "direct")   # every ratio needs it
    return S


def versions(vpy: str) -> dict:
    def first(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"
    return {
        "nginx": first(["nginx", "-v"]), "haproxy": first(["haproxy", "-v"]), "wrk": first(["wrk", "-v"]),
        "python": first([vpy, "-c", "import sys,ssl,uvloop,httptools;print(sys.version.split()[0],"
                         "'uvloop',uvloop.__version__,'httptools',httptools.__version__,ssl.OPENSSL_VERSION)"]),
        "glassmesh": first([vpy, "-c", "import glassmesh;print(getattr(glassmesh,'__version__','?'))"]),
        "kernel": platform.release(),
    }


def build_configs(S: dict, procs: Procs, run: Path, certs: Path, pp: dict[str, int]) -> list[Config]:
    """Start every configuration's processes; the caller waits for them."""
    ngx = lambda name, conf: procs.start(name, ["nginx", "-p", f"{run}/", "-e", f"{run}/{name}.stderr",  # noqa: E731
                                                "-c", render(conf, run, certs, pp), "-g", "daemon off;"])
    cfgs: dict[str, Config] = {}
    want = S["configs"]
    cfgs["direct"] = Config("direct", "direct", pp["UP"], pp["TCPSRC"])
    if "glassmesh" in want:
        c = Config("glassmesh", "glassmesh", pp["GM_OUT"], pp["GM_TOUT"], ["gm_out", "gm_in"], ["gm_out", "gm_in"])
        try:
            out_cfg, in_cfg = glassmesh_snapshots(run / "glassmesh", certs, pp)
            gm = glassmesh_cmd() + ["proxy"]
            w = ["--workers", str(S["gm_workers"])]
            procs.start("gm_in", gm + ["--config", str(in_cfg)] + w)
            procs.start("gm_out", gm + ["--config", str(out_cfg)] + w)
        except Exception as e:  # noqa: BLE001 - a glassmesh problem fails its column, not the run
            c.failed = f"could not start: {type(e).__name__}: {e}"
        cfgs["glassmesh"] = c
    if "nginx" in want:
        ngx("nginx_in", "nginx_inbound.conf")
        ngx("nginx_out", "nginx_outbound.conf")
        pair = ["nginx_out", "nginx_in"]
        cfgs["nginx"] = Config("nginx", "nginx pair", pp["NGX_OUT"], pp["NGX_TOUT"], pair, pair)
    if "haproxy" in want:
        procs.start("haproxy_in", ["haproxy", "-db", "-f", render("haproxy_inbound.cfg", run, certs, pp)])
        procs.start("haproxy_out", ["haproxy", "-db", "-f", render("haproxy_outbound.cfg", run, certs, pp)])
        pair = ["haproxy_out", "haproxy_in"]
        cfgs["haproxy"] = Config("haproxy", "HAProxy pair", pp["HAP_OUT"], pp["HAP_TOUT"], pair, pair)
    return [cfgs[k] for k in report.COLS if k in cfgs]


def inner_ports(c: Config, pp: dict[str, int]) -> list[int]:
    return {"glassmesh": [pp["GM_IN"], pp["GM_OUT_INBOUND"], pp["GM_ADMIN_IN"], pp["GM_ADMIN_OUT"]],
            "nginx": [pp["NGX_IN"], pp["NGX_TIN"]], "haproxy": [pp["HAP_IN"], pp["HAP_TIN"]]}.get(c.name, [])


def bring_up(c: Config, procs: Procs, pp: dict[str, int], S: dict) -> None:
    """Wait for a configuration's listeners and check one request of each kind; on failure say why."""
    if c.failed:
        return
    names = sorted(set(c.proxies + c.tcp_proxies))
    until = time.time() + (30 if c.name == "glassmesh" else 10)

    def dead() -> str | None:
        for n in names:
            if not procs.alive(n):
                return f"{n} exited rc={procs.p[n].returncode}: {procs.log_tail(n)}"
        return None

    for port in [c.http_port] + inner_ports(c, pp):
        while not wait_port(port, min(until, time.time() + 0.5)):
            why = dead()
            if why or time.time() >= until:
                c.failed = why or (f"port {port} not listening in time; "
                                   f"log: {' / '.join(procs.log_tail(n, 3) for n in names)}")
                return
    if c.name == "glassmesh":
        try:
            st, _, body = http_get(pp["GM_ADMIN_IN"], "/ready", host="127.0.0.1")
            if st != 200:
                c.note += f"admin /ready answered {st}. "
        except OSError as e:
            c.note += f"admin /ready: {e}. "
    try:
        st, hdrs, body = http_get(c.http_port, "/")
    except OSError as e:
        c.failed = f"GET / through port {c.http_port} failed: {e}"
        return
    h = {k.lower(): v for k, v in hdrs.items()}
    if st != 200 or body != b"ok\n":
        c.failed = f"GET / answered {st} {body[:200]!r} {h.get('glassmesh-error', '')}".strip()
        return
    if c.name == "glassmesh":
        try:
            m = re.search(r"hot path: (\w+)", (procs.run / "gm_out.log").read_text(errors="replace")[:4000])
            c.note += f"hot path: {m.group(1)}. " if m else ""
        except OSError:
            pass
        trail = h.get("glassmesh-trail")
        c.note += f"trail: {trail}. " if trail else "response had no glassmesh-trail header. "
    try:
        st, hdrs, body = http_get(c.http_port, "/big", timeout=10)
        if st != 200 or len(body) != BIG:
            c.row_failed["big"] = f"GET /big answered {st} with {len(body)} bytes"
    except OSError as e:
        c.row_failed["big"] = f"GET /big failed: {e}"
    if c.tcp_port and not wait_port(c.tcp_port, time.time() + 3):
        c.row_failed["tcp"] = f"TCP link port {c.tcp_port} not listening"


def glassmesh_metrics(run: Path, pp: dict[str, int]) -> str:
    """Save both proxies' /metrics; say how many requests shared how many mTLS handshakes (pooling works?)."""
    out = ""
    for side, port in (("bout", pp["GM_ADMIN_OUT"]), ("bin", pp["GM_ADMIN_IN"])):
        try:
            st, _, body = http_get(port, "/metrics", host="127.0.0.1")
        except OSError as e:
            return f"/metrics of {side} unreadable: {e}. "
        (run / f"glassmesh_{side}_metrics.txt").write_bytes(body)
        if side == "bout" and st == 200:
            tot = {"glassmesh_requests_total": 0.0, "glassmesh_tls_handshakes_total": 0.0}
            for line in body.decode(errors="replace").splitlines():
                name = line.split("{", 1)[0].split(" ", 1)[0]
                if name in tot and 'side="outbound"' in line:
                    try:
                        tot[name] += float(line.rsplit(" ", 1)[1])
                    except ValueError:
                        pass
            out += (f"outbound side of bout: {tot['glassmesh_requests_total']:,.0f} requests over "
                    f"{tot['glassmesh_tls_handshakes_total']:,.0f} mTLS handshakes. ")
    return out


def run_row(row: str, c: Config, procs: Procs, S: dict, raw) -> dict:
    d = S["dur"]
    if row == "c32":
        return measure.wrk(procs, c.http_port, 32, d, c.proxies, raw_log=raw, tag=f"{c.name} c32")
    if row == "c1":
        return measure.wrk(procs, c.http_port, 1, d, c.proxies, raw_log=raw, tag=f"{c.name} c1")
    if row == "conn":
        return measure.wrk(procs, c.http_port, 32, d, c.proxies, close=True, raw_log=raw, tag=f"{c.name} conn")
    if row == "big":
        return measure.wrk(procs, c.http_port, S["big_conns"], d, c.proxies, path="/big", raw_log=raw,
                           tag=f"{c.name} big")
    if row == "rate":
        return measure.rate(procs, c.http_port, S["rate"], d, S["rate_conns"], c.proxies)
    if row == "tcp":
        return measure.tcp_bulk(procs, c.tcp_port, S["tcp_bytes"], S["tcp_timeout"], c.tcp_proxies)
    raise ValueError(row)


def brief(row: str, r: dict) -> str:
    if r.get("error"):
        return f"ERROR {r['error']}"
    if row == "tcp":
        return f"{r['gbit_s']:.2f} Gbit/s cpu {r.get('proxy_cpu_s_per_gib')} s/GiB"
    if row == "rate":
        return f"p50 {r['p50_ms']} p99 {r['p99_ms']} p99.9 {r['p999_ms']} ms ({r['completed']}/{r['expected']})"
    extra = f" {r['gbit_s']:.2f} Gbit/s" if row == "big" else ""
    cpu = f" cpu {r['proxy_cpu_us_per_req']} us/req" if r.get("proxy_cpu_us_per_req") is not None else ""
    return f"{r['rps']:>9,.0f} req/s p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} p99.9 {r['p999_ms']:.3f} ms{extra}{cpu}"


def run_table(S: dict, procs: Procs, run: Path, certs: Path, pp: dict[str, int], R: dict, sampler, raw) -> int | None:
    """The main table: every configuration, every row. Returns an exit status when HOLD ends the run."""
    cfgs = build_configs(S, procs, run, certs, pp)
    for c in cfgs:
        bring_up(c, procs, pp, S)
        log(f"up {c.name:9s}", "FAILED: " + c.failed if c.failed else "ok", c.note,
            *(f"[{k} row cannot run: {v}]" for k, v in c.row_failed.items()))
    R["runs"] = {r: {c.name: [] for c in cfgs} for r in ROWS if r not in S["skip"]}
    # warm-up (pools, TLS sessions, allocator), then the idle RSS of each proxy
    for c in cfgs:
        if not c.failed:
            r = measure.wrk(procs, c.http_port, 32, max(1, int(S["warm"])), c.proxies)
            if r.get("error"):
                c.failed = f"warm-up: {r['error']}"
            log(f"warm {c.name:9s}", brief("c32", r))
    time.sleep(1)
    for c in cfgs:
        R["configs"][c.name] = {"label": c.label}
        names = sorted(set(c.proxies + c.tcp_proxies))
        R["configs"][c.name]["rss_idle_mb"] = {n: round(measure.rss_mb(procs, n), 1) for n in c.proxies}
        R["configs"][c.name]["rss_idle_all_mb"] = {n: round(measure.rss_mb(procs, n), 1) for n in names}
    if S["hold"]:
        log("HOLD: stack is up for", S["hold"], "s; no measurements. pids:",
            {n: p.pid for n, p in procs.p.items()})
        for c in cfgs:
            log(f"  {c.name:9s} http 127.0.0.1:{c.http_port} (Host: up)  tcp 127.0.0.1:{c.tcp_port}",
                c.failed or "")
        time.sleep(S["hold"])
        return 0
    live = [c for c in cfgs]
    for rep in range(S["reps"]):
        order = live[rep % len(live):] + live[:rep % len(live)]
        for row in R["runs"]:
            for c in order:
                if c.failed or row in c.row_failed or (row == "tcp" and not c.tcp_port):
                    continue
                names = c.tcp_proxies if row == "tcp" else c.proxies
                gone = [n for n in names if not procs.alive(n)]
                if gone:
                    c.failed = (f"{gone[0]} exited rc={procs.p[gone[0]].returncode} during the run: "
                                f"{procs.log_tail(gone[0])}")
                    continue
                sampler.watch(names)
                r = run_row(row, c, procs, S, raw)
                sampler.watch([])
                gone = [n for n in names if not procs.alive(n)]
                if gone:
                    r["error"] = f"{gone[0]} exited rc={procs.p[gone[0]].returncode}: {procs.log_tail(gone[0])}"
                    c.failed = r["error"]
                r["rep"] = rep
                R["runs"][row][c.name].append(r)
                log(f"rep{rep + 1} {row:4s} {c.name:9s}", brief(row, r))
    gm = next((c for c in cfgs if c.name == "glassmesh"), None)
    if gm is not None and not gm.failed:
        gm.note += glassmesh_metrics(run, pp)
    for c in cfgs:
        info = R["configs"][c.name]
        info["rss_peak_mb"] = {n: round(v, 1) for n, v in sampler.peak.items()
                               if n in c.proxies or n in c.tcp_proxies}
        info.update({"failed": c.failed, "row_failed": c.row_failed, "note": c.note.strip()})
    # the sections that follow measure glassmesh alone: the table's proxies would only take memory
    procs.stop(sorted({n for c in cfgs for n in c.proxies + c.tcp_proxies}))
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="DUR=3 REPS=1, 256 MiB TCP: about 2 minutes")
    ap.add_argument("--configs", help="comma list of " + ",".join(report.COLS) + " (direct is always run)")
    ap.add_argument("--only", help="comma list of " + ",".join(PARTS) + " (default: all; ONLY=... does the same)")
    ap.add_argument("--out", help="results directory (default bench/results/<timestamp>)")
    args = ap.parse_args()
    S = settings(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or os.environ.get("OUT_DIR") or Path(__file__).resolve().parent / "results" / stamp)
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    pp = ports(S["port_offset"])
    want_sections = [s for s in sections.SECTIONS if s in S["only"]]
    table_ports = pp if "table" in S["only"] else {k: pp[k] for k in ("UP", "TCPSRC")}   # the app is shared
    check_ports_free(dict(table_ports, **sections.ports_needed(pp, want_sections)))
    procs = Procs(run)
    sampler = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    log(f"results -> {out} (parts: {', '.join(S['only'])})")
    try:
        certs = run / "certs"
        how = make_certs(certs, ["client", "up", "bulk"])
        (run / "big.bin").write_bytes(os.urandom(BIG))
        procs.start("upstream", ["nginx", "-p", f"{run}/", "-e", f"{run}/upstream.stderr",
                                 "-c", render("upstream_nginx.conf", run, certs, pp), "-g", "daemon off;"])
        procs.start("tcp_source", [sys.executable, str(TOOLS / "tcp_source.py"), str(pp["TCPSRC"]),
                                   str(S["tcp_bytes"])])
        for port, name in ((pp["UP"], "upstream"), (pp["TCPSRC"], "tcp_source")):
            if not wait_port(port, time.time() + 10):
                raise SystemExit(f"bench: {name} did not listen on {port}: {procs.log_tail(name)}")
        R = {"meta": {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "nproc": os.cpu_count(), "dur": S["dur"],
                      "reps": S["reps"], "rate": S["rate"], "rate_conns": S["rate_conns"],
                      "big_conns": S["big_conns"], "tcp_bytes": S["tcp_bytes"], "gm_workers": S["gm_workers"],
                      "quick": S["quick"], "certs": how, "versions": versions(sys.executable), "ports": pp,
                      "parts": S["only"]},
             "configs": {}, "runs": {}, "sections": {}}
        log("versions", R["meta"]["versions"])
        sampler = measure.RssSampler(procs)
        raw = open(run / "wrk_raw.log", "a")  # noqa: SIM115 - open for the whole run
        md_parts = []
        if "table" in S["only"]:
            held = run_table(S, procs, run, certs, pp, R, sampler, raw)
            if held is not None:
                return held
            md_parts.append(report.markdown(R))
            (out / "results.partial.json").write_text(json.dumps(R, indent=1))
        else:
            md_parts.append(report.header(R))
        ctx = sections.Ctx(S, procs, run, certs, pp, sampler, raw)
        for name in want_sections:
            log(f"section {name}")
            t0 = time.time()
            sec = getattr(sections, f"run_{name}")(ctx)
            sec["seconds"] = round(time.time() - t0, 1)
            R["sections"][name] = sec
            md_parts.append(report.section_markdown(sec))
            (out / "results.partial.json").write_text(json.dumps(R, indent=1))
            log(f"section {name} done in {sec['seconds']:.0f} s")
        md = "\n".join(md_parts)
        (out / "results.json").write_text(json.dumps(R, indent=1))
        (out / "results.md").write_text(md)
        (out / "results.partial.json").unlink(missing_ok=True)
        print()
        print(md)
        log(f"saved {out / 'results.md'} and {out / 'results.json'}; logs and configs in {run}")
        return 0
    except KeyboardInterrupt as e:
        log(f"interrupted ({str(e) or 'Ctrl-C'}); stopping everything we started")
        return 130
    finally:
        if sampler:
            sampler.close()
        procs.stop_all()


if __name__ == "__main__":
    sys.exit(main())
