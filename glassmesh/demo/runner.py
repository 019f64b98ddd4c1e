"""`glassmesh demo`: the three-host mesh of every mesh article, live, on one machine.

host1 (127.0.0.11) runs A; host2 (127.0.0.12) runs an instance of B; host3
(127.0.0.13) runs the other instance of B and C. A calls B and C through its
host's proxy; proxies talk mutual TLS. A traffic generator hits A, and the
runner prints, once a second, each link's figures as host1's proxy reports
them in /metrics. Everything is a child process with a log in state_dir/logs;
Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from glassmesh.ca import CAError
from glassmesh.demo import metrics as m
from glassmesh.demo.procs import (
    Child,
    PortBusy,
    ProcessGroup,
    admin_ready,
    can_connect,
    check_bindable,
    http_get,
    proxy_argv,
    wait_until,
)
from glassmesh.demo.topology import HostSpec, LocalSpec, Topology, build_topology

FRONT_HOST = "host1"
LINKS = [("a", "b"), ("a", "c")]


def demo_hosts() -> list[HostSpec]:
    return [
        HostSpec("host1", "127.0.0.11", [LocalSpec("a", instances=[8080])]),
        HostSpec("host2", "127.0.0.12", [LocalSpec("b", instances=[8080], outbound=False)]),
        HostSpec(
            "host3",
            "127.0.0.13",
            [LocalSpec("b", instances=[8080], outbound=False), LocalSpec("c", instances=[8081], outbound=False)],
        ),
    ]


def build_demo_topology(state_dir: str) -> Topology:
    return build_topology(state_dir, demo_hosts(), calls={"a": ["b", "c"]})


@dataclass
class Options:
    duration: float = 0.0  # 0 = until Ctrl-C
    state_dir: str | None = None
    rate: float = 50.0
    connections: int = 4
    startup_timeout: float = 30.0


class Demo:
    def __init__(self, opts: Options, console: Console | None = None) -> None:
        self.opts = opts
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.stop = threading.Event()
        self.procs: ProcessGroup | None = None
        self.topo: Topology | None = None
        self.traffic: Child | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        keep = self.opts.state_dir is not None
        state = os.path.abspath(self.opts.state_dir) if keep else tempfile.mkdtemp(prefix="glassmesh-demo-")
        old = self._install_signals()
        try:
            return self._run(state)
        finally:
            if self.procs is not None:
                self.console.print("stopping every process ...")
                self.procs.stop()
                self.console.print(f"stopped {len(self.procs.children)} processes")
            self._restore_signals(old)
            if not keep:
                shutil.rmtree(state, ignore_errors=True)

    def _install_signals(self) -> dict[int, Any]:
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, lambda *_: self.stop.set())
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def _run(self, state: str) -> int:
        say = self.console.print
        try:
            self.topo = topo = build_demo_topology(state)
        except (OSError, ValueError, CAError) as e:
            say(f"[red]cannot build the demo topology in {state}: {e}")
            return 1
        try:
            check_bindable(_addresses(topo))
        except PortBusy as e:
            say(f"[red]{e}")
            return 1
        logs = os.path.join(state, "logs")
        self._intro(topo, logs)
        self.procs = procs = ProcessGroup(logs)
        for h in topo.hosts.values():
            procs.start(f"{h.name}-proxy", proxy_argv(h.snapshot))
        app_checks: dict[str, Callable[[], bool]] = {}
        for h in topo.hosts.values():
            for svc, addrs in h.instances.items():
                for i, addr in enumerate(addrs, 1):
                    name = f"{svc}-{h.name}-{i}" if len(addrs) > 1 else f"{svc}-{h.name}"
                    argv = [sys.executable, "-m", "glassmesh.demo.apps", svc, "--listen", addr, "--name", name]
                    if svc == "a":
                        argv += ["--proxy", h.outbound["a"], "--call", "b", "--call", "c"]
                    procs.start(f"app-{name}", argv)
                    app_checks[f"app {name} on {addr}"] = lambda a=addr: can_connect(a)
        checks = {f"{h.name} proxy (admin {h.admin}/ready)": (lambda a=h.admin: admin_ready(a))
                  for h in topo.hosts.values()}
        checks.update(app_checks)
        say(f"starting {len(procs.children)} processes: 3 proxies, {len(app_checks)} apps ...")
        t0 = time.monotonic()
        failing = wait_until(checks, self.opts.startup_timeout,
                             give_up=lambda: self.stop.is_set() or bool(procs.dead()))
        if self.stop.is_set():
            return 0
        if failing or procs.dead():
            self._startup_failed(failing)
            return 1
        say(f"all ready in {time.monotonic() - t0:.1f} s")
        self._probe(topo)
        return self._watch(topo, logs)

    def _intro(self, topo: Topology, logs: str) -> None:
        h1 = topo.host(FRONT_HOST)
        a_addr = h1.instances["a"][0]
        say = self.console.print
        say("[bold]glassmesh demo[/]: A on host1 calls B (host2, host3) and C (host3) through per-host "
            "proxies over mutual TLS")
        say(f"  state:    {topo.state_dir}" + ("" if self.opts.state_dir else "  (removed at exit; keep it with "
                                                "--state-dir DIR)"))
        say(f"  topology: {topo.path}")
        say(f"  logs:     {logs}/")
        say("  try, while it runs:")
        examples = [
            (f"curl -x http://{h1.outbound['a']} http://b/", "call B as A, through host1's proxy"),
            (f"curl http://{a_addr}/", "A itself (it calls B and C)"),
            (f"curl http://{h1.admin}/metrics", "host1 proxy's per-link metrics"),
        ]
        width = max(len(cmd) for cmd, _ in examples)
        for cmd, what in examples:
            say(f"    {cmd:<{width}}   # {what}", markup=False)

    def _startup_failed(self, failing: list[str]) -> None:
        assert self.procs is not None
        say = self.console.print
        dead = self.procs.dead()
        shown: set[str] = set()
        for c in dead:
            tail = c.log_tail(15)
            last = tail.splitlines()[-1] if tail else ""
            say(f"[red]{c.name} exited with status {c.proc.returncode}[/] (log: {c.log})")
            if last in shown:
                say(f"  (same error: {last})", markup=False)
            else:
                say(tail, markup=False)
                shown.add(last)
        if not dead:
            for name in failing:
                say(f"[red]not ready after {self.opts.startup_timeout:.0f} s: {name}")
        if any(c.name.endswith("-proxy") for c in dead) or (not dead and any("proxy" in f for f in failing)):
            say("[red]the proxies failed to start[/]; see above and the logs")

    def _probe(self, topo: Topology) -> None:
        """One request through the mesh before the traffic, so a broken path is explained at once."""
        a_addr = topo.host(FRONT_HOST).instances["a"][0]
        deadline = time.monotonic() + 5
        status, body = 0, b""
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                status, body = http_get(a_addr, "/", timeout=5)
            except (OSError, http.client.HTTPException) as e:
                status, body = 0, str(e).encode()
            if status == 200:
                break
            time.sleep(0.25)
        if status == 200:
            doc = json.loads(body)
            parts = []
            for svc, r in doc.get("calls", {}).items():
                b = r.get("body") if isinstance(r.get("body"), dict) else {}
                parts.append(f"{svc}: {b.get('instance')} saw source {b.get('source')}, trail {r.get('trail')}")
            self.console.print("first request through the mesh: 200; " + "; ".join(parts), markup=False)
        else:
            self.console.print(f"[yellow]first request through the mesh failed ({status}):[/]")
            self.console.print(body.decode("utf-8", "replace")[:2000], markup=False)

    # --- the live view ------------------------------------------------------------------------------

    def _watch(self, topo: Topology, logs: str) -> int:
        assert self.procs is not None
        h1 = topo.host(FRONT_HOST)
        stats_path = os.path.join(logs, "traffic-stats.json")
        baseline = _scrape_all(topo)
        a_addr = h1.instances["a"][0]
        self.traffic = self.procs.start("traffic", [
            sys.executable, "-m", "glassmesh.demo.traffic", "--target", a_addr, "--rate", str(self.opts.rate),
            "--connections", str(self.opts.connections), "--stats", stats_path,
        ])
        how_long = f"for {self.opts.duration:g} s" if self.opts.duration > 0 else "until Ctrl-C"
        self.console.print(f"traffic: {self.opts.rate:g} req/s to A over {self.opts.connections} keep-alive "
                           f"connections, {how_long}")
        start = prev_t = time.monotonic()
        prev = baseline
        died: list[Child] = []
        live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        if live is not None:
            live.start()
        try:
            while not self.stop.is_set():
                end = start + self.opts.duration if self.opts.duration > 0 else None
                wait = 1.0 if end is None else max(0.0, min(1.0, end - time.monotonic()))
                if self.stop.wait(wait):
                    break
                now_t = time.monotonic()
                cur = _scrape_all(topo)
                rows = _rows(cur, prev, now_t - prev_t)
                traffic = _read_json(stats_path)
                if live is not None:
                    live.update(_table(rows, traffic, cur.err, now_t - start), refresh=True)
                else:
                    self._print_lines(rows, traffic, cur.err, now_t - start)
                if cur.outbound is not None:
                    prev, prev_t = cur, now_t
                for c in self.procs.dead():
                    if c not in died:  # keep going: the figures show what the loss does to the links
                        died.append(c)
                        self.console.print(f"[red]{c.name} (pid {c.pid}) exited with status {c.proc.returncode}[/]"
                                           f"; last lines of {c.log}:")
                        self.console.print(c.log_tail(5), markup=False)
                if end is not None and now_t >= end:
                    break
        finally:
            if live is not None:
                live.stop()
        # Stop the traffic first so that its last counts land, then read the totals.
        self.traffic.proc.send_signal(signal.SIGTERM)
        try:
            self.traffic.proc.wait(timeout=12)
        except Exception:
            self.traffic.proc.kill()
        final = _scrape_all(topo)
        rc = self._summary(final if final.outbound is not None else prev, baseline, time.monotonic() - start,
                           _read_json(stats_path))
        if died:
            self.console.print("[red]exited during the run: " + ", ".join(c.name for c in died))
        return 1 if died else rc

    def _print_lines(self, rows: list[Row], traffic: dict[str, Any] | None, err: str | None,
                     elapsed: float) -> None:
        out = []
        for name, f, spread in rows:
            if f is None:
                out.append(f"[{elapsed:5.0f}s] {name:8} no traffic seen yet")
            else:
                out.append(f"[{elapsed:5.0f}s] {name:8} {f.rate or 0:6.1f} req/s  success {m.fmt_pct(f.success):>6}  "
                           f"p50 {m.fmt_ms(f.p50):>9}  p99 {m.fmt_ms(f.p99):>9}  {_mtls(f)}  "
                           f"served by {_fmt_spread(spread)}")
        if err:
            out.append(f"[{elapsed:5.0f}s] metrics: {err}")
        if traffic:
            out.append(f"[{elapsed:5.0f}s] {_traffic_line(traffic)}")
        for line in out:
            self.console.print(line, markup=False, highlight=False)

    def _summary(self, final: Scrape, baseline: Scrape, elapsed: float, traffic: dict[str, Any] | None) -> int:
        say = self.console.print
        say(f"[bold]summary[/] ({elapsed:.1f} s, as host1's proxy counted them):")
        rc = 0
        for name, f, spread in _rows(final, baseline, elapsed):
            if f is None or f.requests == 0:
                say(f"  {name}: no requests seen", markup=False)
                rc = 1
                continue
            say(f"  {name}: {f.requests:.0f} requests, {f.rate or 0:.1f} req/s, success {m.fmt_pct(f.success)}, "
                f"p50 {m.fmt_ms(f.p50)}, p99 {m.fmt_ms(f.p99)}, {_mtls(f)} ({f.handshakes:.0f} handshakes), "
                f"served by {_fmt_spread(spread)}", markup=False)
        if traffic:
            say(f"  {_traffic_line(traffic)}", markup=False)
        if rc:
            say("[red]a link carried no requests: see the logs")
        return rc


# --- helpers (pure or nearly) -------------------------------------------------------------------------


def _addresses(topo: Topology) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in topo.hosts.values():
        out[h.inbound] = f"{h.name} proxy inbound"
        out[h.admin] = f"{h.name} proxy admin"
        for svc, a in h.outbound.items():
            out[a] = f"{h.name} proxy outbound for {svc}"
        for t in h.tcp_links:
            out[t["listen"]] = f"{h.name} tcp link {t['source']} -> {t['destination']}"
        for svc, addrs in h.instances.items():
            for a in addrs:
                out[a] = f"app {svc} on {h.name}"
    return out


@dataclass
class Scrape:
    """One look at the mesh: host1's outbound links, and who served each link (inbound, per host)."""

    outbound: dict[m.Link, m.LinkSample] | None
    served: dict[m.Link, dict[str, float]]  # link -> host -> inbound requests so far
    err: str | None = None


Row = tuple[str, m.Figures | None, dict[str, float]]


def _scrape(admin: str, side: str) -> tuple[dict[m.Link, m.LinkSample] | None, str | None]:
    try:
        status, body = http_get(admin, "/metrics", timeout=2)
    except (OSError, http.client.HTTPException) as e:
        return None, f"cannot scrape {admin}/metrics: {e}"
    if status != 200:
        return None, f"{admin}/metrics answered {status}"
    try:
        return m.parse_links(body.decode("utf-8", "replace"), side), None
    except ValueError as e:
        return None, f"cannot parse {admin}/metrics: {e}"


def _scrape_all(topo: Topology) -> Scrape:
    outbound, err = _scrape(topo.host(FRONT_HOST).admin, "outbound")
    served: dict[m.Link, dict[str, float]] = {}
    for h in topo.hosts.values():
        inbound, _ = _scrape(h.admin, "inbound")
        for link, sample in (inbound or {}).items():
            served.setdefault(link, {})[h.name] = sample.total
    return Scrape(outbound, served, err)


def _rows(cur: Scrape, prev: Scrape | None, seconds: float) -> list[Row]:
    rows: list[Row] = []
    for link in LINKS:
        now = (cur.outbound or {}).get(link)
        before = (prev.outbound or {}).get(link) if prev else None
        f = m.figures(now, before, seconds) if now is not None else None
        old = prev.served.get(link, {}) if prev else {}
        spread = {h: n - old.get(h, 0.0) for h, n in sorted(cur.served.get(link, {}).items())}
        rows.append((f"{link[0]} -> {link[1]}", f, {h: n for h, n in spread.items() if n > 0}))
    return rows


def _fmt_spread(spread: dict[str, float]) -> str:
    return ", ".join(f"{h} {n:.0f}" for h, n in spread.items()) or "-"


def _mtls(f: m.Figures) -> str:
    return f"mTLS {f.tls_version or 'yes'}" if f.mtls else "NOT mTLS"


def _traffic_line(t: dict[str, Any]) -> str:
    def ms(v: Any) -> str:
        return f"{v:.1f} ms" if isinstance(v, int | float) else "-"

    return (f"client -> a (traffic generator): {t.get('done', 0)} done, {t.get('ok', 0)} ok, "
            f"{t.get('failed', 0)} failed, p50 {ms(t.get('p50_ms'))}, p99 {ms(t.get('p99_ms'))}, "
            f"{t.get('connections_opened', 0)} connections opened")


def _table(rows: list[Row], traffic: dict[str, Any] | None, err: str | None, elapsed: float) -> Table:
    t = Table(title=f"glassmesh demo: links seen by host1's proxy ({elapsed:.0f} s)", title_justify="left")
    for col in ("link", "req/s", "success", "p50", "p99", "mTLS", "served by (last second)"):
        t.add_column(col, justify="right" if col in ("req/s", "success", "p50", "p99") else "left")
    for name, f, spread in rows:
        if f is None:
            t.add_row(name, "-", "-", "-", "-", "no traffic yet", "-")
        else:
            ok = f.success is None or f.success >= 0.99
            t.add_row(name, f"{f.rate or 0:.1f}", f"[{'green' if ok else 'red'}]{m.fmt_pct(f.success)}",
                      m.fmt_ms(f.p50), m.fmt_ms(f.p99),
                      f"[green]{_mtls(f)}" if f.mtls else f"[red]{_mtls(f)}", _fmt_spread(spread))
    captions = []
    if traffic:
        captions.append(_traffic_line(traffic))
    if err:
        captions.append(f"[red]{err}")
    captions.append("Ctrl-C stops every process")
    t.caption = "\n".join(captions)
    t.caption_justify = "left"
    return t


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_demo(opts: Options, console: Console | None = None) -> int:
    return Demo(opts, console).run()
