"""Measurements: wrk runs, the open-loop rate client, TCP bulk, and proxy CPU/RSS from /proc.

CPU and RSS are read per process tree (a proxy's master and its workers), for the proxy
processes of the configuration under load only, so the figures are the proxies' own cost and
not the client's or the app's.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
import time

from stack import TOOLS, Procs

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = open(f"/proc/{d}/stat").read()
                ppid = int(st[st.rfind(")") + 2:].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def tree(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    kids = _children() if kids is None else kids
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_s(procs: Procs, names: list[str]) -> float:
    """User + system CPU seconds of the named processes and their descendants."""
    kids = _children()
    tot = 0.0
    for n in names:
        if n not in procs.p:
            continue
        for p in tree(procs.p[n].pid, kids):
            try:
                f = open(f"/proc/{p}/stat").read()
                f = f[f.rfind(")") + 2:].split()
                tot += (int(f[11]) + int(f[12])) / TICK
            except (OSError, IndexError):
                pass
    return tot


def pid_cpu_s(procs: Procs, name: str) -> dict[int, float]:
    """CPU seconds of each process of one proxy's tree (a supervisor and its workers, separately)."""
    out: dict[int, float] = {}
    if name not in procs.p:
        return out
    for p in tree(procs.p[name].pid):
        try:
            f = open(f"/proc/{p}/stat").read()
            f = f[f.rfind(")") + 2:].split()
            out[p] = (int(f[11]) + int(f[12])) / TICK
        except (OSError, IndexError):
            pass
    return out


def pin(procs: Procs, names: list[str], cpus: set[int]) -> None:
    """Set the CPU affinity of every thread of every process in the named trees (ours only)."""
    for n in names:
        if n not in procs.p:
            continue
        for p in tree(procs.p[n].pid):
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
            except OSError:
                continue
            for t in tids:
                try:
                    os.sched_setaffinity(t, cpus)
                except OSError:
                    pass


def rss_mb(procs: Procs, name: str) -> float:
    """Resident set of one proxy (its whole process tree), MB."""
    if name not in procs.p:
        return float("nan")
    tot = 0
    for p in tree(procs.p[name].pid):
        try:
            tot += int(open(f"/proc/{p}/statm").read().split()[1]) * PAGE
        except (OSError, IndexError):
            pass
    return tot / 1e6


def pss_mb(procs: Procs, name: str) -> float:
    """Proportional set of one proxy's process tree, MB: pages shared by forked workers (the code, the
    interpreter, what the supervisor loaded before forking) are counted once, not once per process."""
    if name not in procs.p:
        return float("nan")
    tot = 0
    for p in tree(procs.p[name].pid):
        try:
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    tot += int(line.split()[1]) * 1024
                    break
        except (OSError, IndexError, ValueError):
            pass
    return tot / 1e6


def sys_busy_s() -> float:
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / TICK   # all but idle + iowait


def per_cpu_busy_s() -> dict[int, float]:
    """Busy seconds of each CPU (all but idle + iowait), every process on the machine included."""
    out = {}
    for line in open("/proc/stat"):
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            v = [int(x) for x in f[1:]]
            out[int(f[0][3:])] = (sum(v[:8]) - v[3] - v[4]) / TICK
    return out


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class RssSampler:
    """Samples the RSS of the active configuration's proxies while load runs; keeps the peak."""

    def __init__(self, procs: Procs, period: float = 0.2):
        self.procs = procs
        self.period = period
        self.names: list[str] = []
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def watch(self, names: list[str]) -> None:
        with self._lock:
            self.names = list(names)

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock:
                names = list(self.names)
            for n in names:
                v = rss_mb(self.procs, n)
                if v == v and v > self.peak.get(n, 0.0):
                    self.peak[n] = v

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)


class Window:
    """CPU accounting around one load run."""

    def __init__(self, procs: Procs, proxies: list[str], app: list[str]):
        self.procs, self.proxies, self.app = procs, proxies, app

    def __enter__(self) -> Window:
        self.s0, self.k0, self.pc0 = sys_busy_s(), children_cpu_s(), per_cpu_busy_s()
        self.c0, self.u0 = cpu_s(self.procs, self.proxies), cpu_s(self.procs, self.app)
        self.t0 = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = max(time.time() - self.t0, 1e-6)
        self.proxy_cpu = cpu_s(self.procs, self.proxies) - self.c0
        self.app_cpu = cpu_s(self.procs, self.app) - self.u0
        self.client_cpu = children_cpu_s() - self.k0
        busy = sys_busy_s() - self.s0
        pc = per_cpu_busy_s()
        self.cpu_busy_pct = {c: round(100 * (v - self.pc0.get(c, 0.0)) / self.wall, 1) for c, v in pc.items()}
        # busy cores not explained by proxies, app or load client: other tenants, softirq
        self.other_cores = (busy - self.proxy_cpu - self.app_cpu - self.client_cpu) / self.wall

    def fields(self) -> dict:
        return {"proxy_cpu_s": round(self.proxy_cpu, 3), "proxy_cpu_cores": round(self.proxy_cpu / self.wall, 3),
                "app_cpu_cores": round(self.app_cpu / self.wall, 3),
                "client_cpu_cores": round(self.client_cpu / self.wall, 3),
                "other_cpu_cores": round(self.other_cores, 3),
                **{f"cpu{c}_busy_pct": v for c, v in self.cpu_busy_pct.items()}}


_GM = re.compile(r"GMBENCH (.*)")


def wrk(procs: Procs, port: int, conns: int, dur: int, proxies: list[str], *, path: str = "/",
        close: bool = False, raw_log=None, tag: str = "", app: list[str] | None = None,
        cpus: str | None = None, per_pid: bool = False) -> dict:
    """One wrk run. app: processes counted as the app's side (default the upstream nginx); cpus: run wrk
    under `taskset -c CPUS`; per_pid: also the CPU seconds of every process of the proxies' trees."""
    env = dict(os.environ, WRK_PATH=path, WRK_HOST="up", WRK_CLOSE="1" if close else "0")
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{dur}s", "--timeout", "5s", "-s", str(TOOLS / "wrk_report.lua"),
            f"http://127.0.0.1:{port}/"]
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    pp0 = {n: pid_cpu_s(procs, n) for n in proxies} if per_pid else None
    with Window(procs, proxies, ["upstream"] if app is None else app) as w:
        rc, out, err = procs.run_bounded(argv, timeout=dur + 30, env=env)
    pp1 = {n: pid_cpu_s(procs, n) for n in proxies} if per_pid else None
    if raw_log is not None:
        raw_log.write(f"=== {tag} port={port} c={conns} path={path} close={close} rc={rc}\n{out}\n{err}\n")
        raw_log.flush()
    m = _GM.search(out)
    if not m:
        return {"error": f"wrk rc={rc}: {(err or out).strip()[-200:]}"}
    kv = {k: int(v) for k, v in (x.split("=") for x in m.group(1).split())}
    secs = kv["duration_us"] / 1e6
    n = kv["requests"]
    r = {"requests": n, "rps": round(n / secs, 1), "gbit_s": round(kv["bytes"] * 8 / secs / 1e9, 3),
         "p50_ms": kv["p50"] / 1e3, "p90_ms": kv["p90"] / 1e3, "p99_ms": kv["p99"] / 1e3,
         "p999_ms": kv["p999"] / 1e3, "max_ms": kv["max"] / 1e3,
         "errors": {k[4:]: v for k, v in kv.items() if k.startswith("err_") and v}}
    r.update(w.fields())
    r["proxy_cpu_us_per_req"] = round(w.proxy_cpu / max(n, 1) * 1e6, 2) if proxies else None
    if pp0 is not None and pp1 is not None:   # {proxy: {pid: CPU s during the run}}, supervisor included
        r["pid_cpu_s"] = {name: {str(pid): round(c - pp0[name].get(pid, 0.0), 3) for pid, c in per.items()}
                          for name, per in pp1.items()}
    if n == 0:
        r["error"] = "no requests completed"
    elif r["errors"].get("status"):
        r["error"] = f"{r['errors']['status']} non-2xx/3xx responses"
    elif sum(r["errors"].values()) > max(10, n // 1000):
        r["error"] = f"socket errors {r['errors']}"
    return r


def rate(procs: Procs, port: int, rps: int, dur: int, conns: int, proxies: list[str]) -> dict:
    argv = [sys.executable, str(TOOLS / "rate_client.py"), str(port), str(rps), str(dur), str(conns), "up", "/"]
    with Window(procs, proxies, ["upstream"]) as w:
        rc, out, err = procs.run_bounded(argv, timeout=dur + 30)
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"rate client rc={rc}: {(err or out).strip()[-200:]}"}
    r.update(w.fields())
    if r["completed"] < 0.99 * r["expected"] or r["non2xx"] or r["errors"]:
        r["error"] = f"completed {r['completed']}/{r['expected']}, non2xx {r['non2xx']}, conn errors {r['errors']}"
    return r


def tcp_bulk(procs: Procs, port: int, nbytes: int, limit_s: float, proxies: list[str]) -> dict:
    argv = [sys.executable, str(TOOLS / "tcp_client.py"), str(port), str(nbytes), str(limit_s)]
    with Window(procs, proxies, ["tcp_source"]) as w:
        rc, out, err = procs.run_bounded(argv, timeout=limit_s + 15)
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"tcp client rc={rc}: {(err or out).strip()[-200:]}"}
    client_err = r.pop("error", "")
    r.update(w.fields())
    r["proxy_cpu_s_per_gib"] = round(w.proxy_cpu / (r["bytes"] / 2**30), 3) if proxies and r["bytes"] else None
    if not r["ok"]:
        r["error"] = f"received {r['bytes']} of {nbytes} bytes {client_err}".strip()
    return r
