"""`glassmesh demo`: the three-host mesh of every mesh article, live, on one machine, run by the control plane.

host1 (127.0.0.11) runs A; host2 (127.0.0.12) and host4 (127.0.0.14) run B's
v1 (labelled version: v1 in mesh.yaml); host3 (127.0.0.13) runs B's v2 and C.
The runner starts
`glassmesh control` (state in state_dir/control, API on 127.0.0.1:4200),
writes a mesh.yaml for that topology and applies it, issues each host's
certificates into its data dir, and starts one `glassmesh proxy --control
--host --data` per host: the proxies get their snapshots from the control
plane, health-check the app instances next to them and report them, and the
control plane pushes each host the endpoints that are up.

A traffic generator hits A, which calls B and C through host1's proxy. Once a
second the runner prints each link's figures as host1's proxy reports them in
/metrics, and a line whenever a proxy starts running a new snapshot version.
Part way through, it stops B on host2 (SIGTERM to its PID), shows its traffic
moving to host3 with no failed request (host1's proxy retries what host2
could not deliver, then the control plane pushes host1 a snapshot without
host2), starts it again and shows it coming back.

Meanwhile B's v2 is rolled out as a canary: mesh.yaml starts with a route that
sends it 0% of B's traffic, and the runner rewrites that route's weights and
runs `glassmesh apply -f mesh.yaml` (the real CLI, with the demo's operator
credential) to give v2 1%, then 10%, then 50%. The live view counts what each
subset served (each host's proxy reports what its instance answered, and a
host's instance is in one subset), and so does the summary.

Everything is a child process with a log in state_dir/logs; Ctrl-C or
SIGTERM stops them all, the control plane included.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from glassmesh.api.credential import CredentialError
from glassmesh.ca import CAError
from glassmesh.demo import metrics as m
from glassmesh.demo.operator import Operator, install_credential
from glassmesh.demo.procs import (
    Child,
    PortBusy,
    ProcessGroup,
    admin_ready,
    can_connect,
    check_bindable,
    control_argv,
    glassmesh_argv,
    http_get,
    http_json,
    wait_until,
)
from glassmesh.demo.topology import (
    HostSpec,
    LocalSpec,
    Topology,
    build_control_topology,
    mesh_config,
    mesh_yaml_text,
)

FRONT_HOST = "host1"
LINKS = [("a", "b"), ("a", "c")]
CONTROL_LISTEN = "127.0.0.1:4200"
CONTROL_URL = f"https://{CONTROL_LISTEN}"  # the operator API: TLS, with the admin credential
CONTROL_PROXY_LISTEN = "127.0.0.1:4201"  # what `glassmesh control` also binds by default (joins, mTLS)
CONTROL_PROXY_URL = f"https://{CONTROL_PROXY_LISTEN}"
# Each proxy checks the instances next to it twice a second (a refused connect counts at once).
HEALTH = {"tcp": True, "interval_ms": 500, "timeout_ms": 250}
BOUNCE = ("b", "host2")  # the instance stopped and started again during the run
UNTIMED_BOUNCE = (10.0, 15.0)  # without --duration: stop it 10 s into the traffic, start it 5 s later
MIN_BOUNCE_DURATION = 10.0
MESH_HEADER = """\
The demo mesh, written by `glassmesh demo` and applied with the equivalent of
`glassmesh apply -f mesh.yaml`. Edit it and apply it again while the demo runs
(GLASSMESH_CONTROL defaults to https://127.0.0.1:4200; the demo puts its operator
credential where the CLI looks, ~/.config/glassmesh/operator.pem, unless one is there)."""


# The canary: B's v2 (host3) gets this share of A's calls, one `glassmesh apply` per step; v1 (host2, host4)
# the rest. The demo starts at 0%.
CANARY_SERVICE = "b"
CANARY_STEPS = (1, 10, 50)
UNTIMED_CANARY = (20.0, 30.0, 40.0)  # without --duration: seconds into the traffic of each step
V1 = {"version": "v1"}
V2 = {"version": "v2"}


def demo_hosts() -> list[HostSpec]:
    return [
        HostSpec("host1", "127.0.0.11", [LocalSpec("a", instances=[8080])]),
        HostSpec("host2", "127.0.0.12", [LocalSpec("b", instances=[8080], labels=V1)]),
        HostSpec("host3", "127.0.0.13", [LocalSpec("b", instances=[8080], labels=V2),
                                         LocalSpec("c", instances=[8081])]),
        HostSpec("host4", "127.0.0.14", [LocalSpec("b", instances=[8080], labels=V1)]),
    ]


def canary_policy(percent: int) -> dict[str, dict[str, Any]]:
    """B's traffic policy with v2 at `percent`% of its calls: two subsets by label, one weighted route."""
    return {CANARY_SERVICE: {
        "subsets": [{"name": "v1", "labels": V1}, {"name": "v2", "labels": V2}],
        "routes": [{"name": "canary", "split": [{"subset": "v1", "weight": 100 - percent},
                                                {"subset": "v2", "weight": percent}]}],
    }}


def build_demo_topology(state_dir: str) -> Topology:
    """mesh.yaml, the CA, each host's data dir with its certificates, and topology.json."""
    return build_control_topology(
        state_dir, demo_hosts(), control_url=CONTROL_URL, calls={"a": ["b", "c"]},
        health={s: HEALTH for s in ("a", "b", "c")}, header=MESH_HEADER, policy=canary_policy(0),
    )


def canary_yaml(percent: int) -> str:
    """The demo's mesh.yaml with v2 at `percent`%: what an operator would edit before `glassmesh apply`."""
    doc = mesh_config(demo_hosts(), calls={"a": ["b", "c"]}, health={s: HEALTH for s in ("a", "b", "c")},
                      policy=canary_policy(percent))
    return mesh_yaml_text(doc, MESH_HEADER)


def subsets_by_host(topo_hosts: list[HostSpec], service: str = CANARY_SERVICE) -> dict[str, str]:
    """host -> the subset its instance of `service` is in (labels are per host, so this is exact)."""
    names = {tuple(sorted(V1.items())): "v1", tuple(sorted(V2.items())): "v2"}
    out = {}
    for h in topo_hosts:
        for ls in h.services:
            if ls.name == service and tuple(sorted(ls.labels.items())) in names:
                out[h.name] = names[tuple(sorted(ls.labels.items()))]
    return out


def canary_schedule(duration: float) -> list[tuple[float, int]]:
    """(seconds into the traffic, v2's percent) of each canary step: at 25%, 50% and 75% of a timed run."""
    if duration <= 0:
        return list(zip(UNTIMED_CANARY, CANARY_STEPS, strict=True))
    return [(duration * (i + 1) / (len(CANARY_STEPS) + 1), p) for i, p in enumerate(CANARY_STEPS)]


def bounce_schedule(duration: float) -> tuple[float, float] | None:
    """When (seconds into the traffic) to stop B on host2 and to start it again; None: not in this run.

    A timed run stops it at 40% of the duration and starts it 3 to 5 s later,
    leaving time to see it back; a run shorter than 10 s leaves it alone.
    """
    if duration <= 0:
        return UNTIMED_BOUNCE
    if duration < MIN_BOUNCE_DURATION:
        return None
    stop = 0.4 * duration
    return stop, stop + min(5.0, max(3.0, 0.25 * duration))


@dataclass
class Options:
    duration: float = 0.0  # 0 = until Ctrl-C
    state_dir: str | None = None
    rate: float = 50.0
    connections: int = 4
    startup_timeout: float = 30.0


def _cli() -> str:
    """How to run `glassmesh` in the hints: the command the user ran, when it was the glassmesh script."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) != "glassmesh" or os.sep not in argv0:
        return "glassmesh"
    on_path = shutil.which("glassmesh")
    return "glassmesh" if on_path and os.path.samefile(on_path, argv0) else argv0


# --- snapshots: what each proxy runs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """A proxy started running a new snapshot version (seen on its /ready, content from its /config)."""

    at: float  # monotonic
    host: str
    version: int
    endpoints: dict[str, list[str]]  # service -> hosts of its endpoints, as in this snapshot
    before: dict[str, list[str]] | None
    splits: dict[str, str] = field(default_factory=dict)  # service -> "v1 99%, v2 1%" (its first route's split)
    splits_before: dict[str, str] | None = None


def _endpoints(snapshot: dict[str, Any]) -> dict[str, list[str]]:
    return {s["name"]: [e.get("host", e["address"]) for e in s.get("endpoints", [])]
            for s in snapshot.get("services", [])}


def _splits(snapshot: dict[str, Any]) -> dict[str, str]:
    """service -> its first weighted route's split as "v1 99%, v2 1%" (services without one left out)."""
    out = {}
    for s in snapshot.get("services", []):
        for r in (s.get("policy") or {}).get("routes", []):
            split = r.get("split") or []
            total = sum(b.get("weight", 0) for b in split)
            if total:
                out[s["name"]] = ", ".join(f"{b['subset']} {100 * b.get('weight', 0) / total:g}%" for b in split)
                break
    return out


def describe_push(p: Push) -> str:
    """'b now host3 (was host2, host3)' for what changed; '' when no endpoint moved and no split changed."""
    if p.before is None:
        return ", ".join(f"{s} on {', '.join(h) or 'nothing'}" for s, h in sorted(p.endpoints.items()))
    parts = []
    for svc in sorted(set(p.endpoints) | set(p.before)):
        new, old = p.endpoints.get(svc, []), p.before.get(svc, [])
        if new != old:
            parts.append(f"{svc} now {', '.join(new) or 'nothing'} (was {', '.join(old) or 'nothing'})")
    before = p.splits_before or {}
    for svc in sorted(set(p.splits) | set(before)):
        if p.splits.get(svc) != before.get(svc):
            parts.append(f"{svc} split {p.splits.get(svc, 'none')} (was {before.get(svc, 'none')})")
    return "; ".join(parts)


class SnapshotWatch:
    """Polls each proxy's /ready ten times a second; on a new snapshot version, reads its /config.

    What the proxies run, not what the control plane meant to send: a push
    counts once a proxy has swapped it in.
    """

    def __init__(self, admins: dict[str, str], on_push: Callable[[Push], None] | None = None,
                 interval: float = 0.1) -> None:
        self.admins, self.on_push, self.interval = admins, on_push, interval
        self.versions: dict[str, int] = {}
        self.endpoints: dict[str, dict[str, list[str]]] = {}
        self.splits: dict[str, dict[str, str]] = {}
        self.pushes: list[Push] = []
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> list[Push]:
        found = []
        for host, admin in self.admins.items():
            try:
                status, doc = http_json(admin, "GET", "/ready", timeout=1.0)
                version = int(doc["snapshot_version"]) if status == 200 and doc else None
                if version is None or version == self.versions.get(host):
                    continue
                status, snap = http_json(admin, "GET", "/config", timeout=1.0)
                if status != 200 or not snap:
                    continue
            except (OSError, http.client.HTTPException, KeyError, TypeError, ValueError):
                continue
            eps = _endpoints(snap)
            push = Push(time.monotonic(), host, int(snap.get("version", version)), eps, self.endpoints.get(host),
                        _splits(snap), self.splits.get(host))
            first = host not in self.versions
            if not first and self.on_push is not None:
                self.on_push(push)  # before waiters hear of it, so the push is told before what it caused
            with self._cv:
                self.versions[host], self.endpoints[host] = push.version, eps
                self.splits[host] = push.splits
                if not first:
                    self.pushes.append(push)
                    found.append(push)
                self._cv.notify_all()
        return found

    def start(self) -> None:
        on_push, self.on_push = self.on_push, None
        self.poll_once()  # the baseline: versions the proxies run now are not pushes
        self.on_push = on_push
        self._thread = threading.Thread(target=self._run, name="snapshot-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def wait_for(self, pred: Callable[[dict[str, dict[str, list[str]]]], bool], timeout: float,
                 give_up: threading.Event | None = None,
                 push_pred: Callable[[Push], bool] | None = None, since: int | None = None) -> Push | None:
        """The first push after now (or after pushes[since]) that makes pred(host -> service -> hosts) and
        push_pred(push) true; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            seen = len(self.pushes) if since is None else since
            while True:
                for p in self.pushes[seen:]:
                    view = dict(self.endpoints)
                    if pred(view) and (push_pred is None or push_pred(p)):
                        return p
                seen = len(self.pushes)
                left = deadline - time.monotonic()
                if left <= 0 or (give_up is not None and give_up.is_set()):
                    return None
                self._cv.wait(min(left, 0.2))


# --- the instance that comes and goes -----------------------------------------------------------------------


@dataclass
class Bounce:
    """What happened to the instance stopped and started again, for the live lines and the summary."""

    service: str
    host: str
    stop_at: float  # seconds into the traffic
    start_at: float
    stopped: float | None = None  # seconds into the traffic, when it had exited
    stopped_pid: int | None = None
    out: Push | None = None  # host1's snapshot without it
    out_after: float | None = None
    started: float | None = None
    started_pid: int | None = None
    back: Push | None = None  # host1's snapshot with it again
    back_after: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.back is not None


@dataclass
class CanaryStep:
    """One shift of B's traffic to v2: when it was applied, and when host1's proxy ran it."""

    at: float  # seconds into the traffic, as planned
    percent: int
    applied: float | None = None  # seconds into the traffic, when `glassmesh apply` returned
    version: int | None = None  # the config version it made
    push: Push | None = None  # host1's snapshot with the new split
    push_after: float | None = None
    error: str | None = None
    served: dict[str, float] | None = None  # requests each subset had served (since the start) at the push


# --- the demo ---------------------------------------------------------------------------------------------


class Demo:
    def __init__(self, opts: Options, console: Console | None = None) -> None:
        self.opts = opts
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.stop = threading.Event()
        self.procs: ProcessGroup | None = None
        self.topo: Topology | None = None
        self.traffic: Child | None = None
        self.instances: dict[tuple[str, str], Child] = {}  # (service, host) -> its app process
        self.watch: SnapshotWatch | None = None
        self.bounce: Bounce | None = None
        self.canary: list[CanaryStep] = []
        self.baseline = Scrape(None, {})
        self.t0 = time.monotonic()  # when the traffic started (the live lines count from it)
        self.trace_hinted = False  # printed lines (not a terminal) name a request to trace once

    # --- lifecycle ------------------------------------------------------------------------------

    def run(self) -> int:
        keep = self.opts.state_dir is not None
        state = os.path.abspath(self.opts.state_dir) if keep else tempfile.mkdtemp(prefix="glassmesh-demo-")
        old = self._install_signals()
        try:
            return self._run(state)
        finally:
            if self.watch is not None:
                self.watch.stop()
            if self.procs is not None:
                self.console.print("stopping every process (control plane included) ...")
                forced = self.procs.stop()
                self.console.print(f"stopped {len(self.procs.children)} processes")
                for c in forced:  # it hung on SIGTERM: its log says what it was doing
                    self.console.print(f"[yellow]{c.name} (pid {c.pid}) did not exit within 5 s of SIGTERM and was "
                                       f"killed (SIGKILL); last lines of {c.log}:[/]")
                    self.console.print(c.log_tail(5), markup=False)
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

    def say(self, text: str, style: str = "") -> None:
        """An event line, stamped like the live lines (seconds into the traffic)."""
        stamp = f"[{time.monotonic() - self.t0:5.0f}s] " if self.traffic is not None else ""
        self.console.print(stamp + text, markup=False, highlight=False, style=style or None)

    def _run(self, state: str) -> int:
        say = self.console.print
        try:
            self.topo = topo = build_demo_topology(state)
        except (OSError, ValueError, CAError) as e:
            say(f"[red]cannot build the demo topology in {state}: {e}")
            return 1
        try:
            check_bindable({**_addresses(topo), CONTROL_LISTEN: "the control plane's API",
                            CONTROL_PROXY_LISTEN: "the control plane's proxy listener"})
        except PortBusy as e:
            say(f"[red]{e}")
            return 1
        logs = os.path.join(state, "logs")
        self._intro(topo, logs)
        self.procs = procs = ProcessGroup(logs)

        # 1. The control plane, and the mesh config.
        assert topo.control_dir is not None and topo.mesh_yaml is not None
        t0 = time.monotonic()
        control = procs.start("control", control_argv(topo.control_dir, CONTROL_LISTEN))
        self.operator = op = Operator(CONTROL_URL, os.path.join(topo.control_dir, "admin.pem"))
        failing = wait_until({f"control plane ({CONTROL_URL}/v1/status, as the admin in {op.path})": op.up},
                             self.opts.startup_timeout, give_up=lambda: self.stop.is_set() or bool(procs.dead()))
        if self.stop.is_set():
            return 0
        if failing or procs.dead():
            self._startup_failed(failing)
            return 1
        say(f"control plane up on {CONTROL_URL} in {time.monotonic() - t0:.1f} s (pid {control.pid})")
        say(install_credential(op.path), markup=False)
        if not self._apply(topo.mesh_yaml):
            return 1

        # 2. Apps and proxies; the proxies get their snapshots from the control plane.
        app_checks: dict[str, Callable[[], bool]] = {}
        for h in topo.hosts.values():
            for svc, addrs in h.instances.items():
                for addr in addrs:
                    name = f"{svc}-{h.name}"
                    argv = [sys.executable, "-m", "glassmesh.demo.apps", svc, "--listen", addr, "--name", name]
                    if svc == "a":
                        argv += ["--proxy", h.outbound["a"], "--call", "b", "--call", "c"]
                    self.instances[(svc, h.name)] = procs.start(f"app-{name}", argv)
                    app_checks[f"app {name} on {addr}"] = lambda a=addr: can_connect(a)
        for h in topo.hosts.values():  # each host joins with a single-use token, as a real host does
            try:
                join = op.join_args(h.name, h.local_services, h.dir, CONTROL_PROXY_URL)
            except (OSError, RuntimeError, CredentialError) as e:
                say(f"[red]cannot admit {h.name}: {e}")
                return 1
            procs.start(f"{h.name}-proxy", glassmesh_argv("proxy", *join))
        checks = {f"{h.name} proxy (admin {h.admin}/ready: has its snapshot, listeners up)":
                  (lambda a=h.admin: admin_ready(a)) for h in topo.hosts.values()}
        checks.update(app_checks)
        say(f"starting {len(topo.hosts)} proxies (--control {CONTROL_PROXY_URL} --join TOKEN --ca-sha256 ... "
            f"--data {state}/HOST: each joins with its own token) "
            f"and {len(app_checks)} apps ...", markup=False)
        t0 = time.monotonic()
        failing = wait_until(checks, self.opts.startup_timeout,
                             give_up=lambda: self.stop.is_set() or bool(procs.dead()))
        if self.stop.is_set():
            return 0
        if failing or procs.dead():
            self._startup_failed(failing)
            return 1

        # 3. The proxies report their instances; host1's snapshot lists them once their checks pass.
        want = {d: sorted({i.host for i in topo.services[d].instances}) for _, d in LINKS}
        listed = ", ".join(f"{svc} on {' and '.join(hosts)}" for svc, hosts in want.items())
        failing = wait_until({f"host1's snapshot lists {listed} (the proxies' health reports)":
                              lambda: _front_endpoints(topo) == want}, self.opts.startup_timeout,
                             give_up=lambda: self.stop.is_set() or bool(procs.dead()))
        if self.stop.is_set():
            return 0
        if failing or procs.dead():
            self._startup_failed(failing)
            return 1
        self.watch = SnapshotWatch({h.name: h.admin for h in topo.hosts.values()}, self._pushed)
        self.watch.start()
        versions = ", ".join(f"{h} v{v}" for h, v in sorted(self.watch.versions.items()))
        say(f"all ready in {time.monotonic() - t0:.1f} s: instances registered and healthy, snapshots {versions}")
        self._probe(topo)
        return self._watch(topo, logs)

    def _apply(self, path: str) -> bool:
        """`glassmesh apply -f mesh.yaml`, through the same API call."""
        with open(path) as f:
            text = f.read()
        try:
            status, doc = self.operator.call("POST", "/v1/apply", {"yaml": text, "filename": path})
        except (OSError, http.client.HTTPException, CredentialError) as e:
            self.console.print(f"[red]cannot apply {path}: {e}")
            return False
        if status != 200 or not doc:
            self.console.print(f"[red]the control plane refused {path} ({status}):")
            for p in (doc or {}).get("problems", []):
                self.console.print(f"  {path}:{p['line']}: {p['field']}: {p['message']}", markup=False)
            if not (doc or {}).get("problems"):
                self.console.print(f"  {(doc or {}).get('error', 'no answer')}", markup=False)
            return False
        self.console.print(f"applied {path}: config version {doc['version']} (sha256 {doc['sha256'][:12]})",
                           markup=False)
        return True

    def _intro(self, topo: Topology, logs: str) -> None:
        h1 = topo.host(FRONT_HOST)
        a_addr = h1.instances["a"][0]
        say = self.console.print
        say("[bold]glassmesh demo[/]: A on host1 calls B (v1 on host2 and host4, v2 on host3) and C (host3) "
            "through per-host proxies over mutual TLS, configured by the control plane")
        say(f"  state:    {topo.state_dir}" + ("" if self.opts.state_dir else "  (removed at exit; keep it with "
                                                "--state-dir DIR)"), markup=False)
        say(f"  control:  {CONTROL_URL} (its state in {topo.control_dir})", markup=False)
        say(f"  config:   {topo.mesh_yaml}", markup=False)
        say(f"  topology: {topo.path}", markup=False)
        say(f"  logs:     {logs}/", markup=False)
        say("  try, while it runs:")
        gm = _cli()
        examples = [
            (f"curl -x http://{h1.outbound['a']} http://b/", "call B as A, through host1's proxy"),
            (f"curl http://{a_addr}/", "A itself (it calls B and C)"),
            (f"curl http://{h1.admin}/metrics", "host1 proxy's per-link metrics"),
            (f"{gm} status", "the control plane: hosts, snapshot versions, unhealthy instances"),
            (f"{gm} get", "the mesh config in force (history, diff -f, apply -f work too)"),
            (f"{gm} tap --from a --to b --headers", "A's calls to B, live, at both proxies (--body N: bodies)"),
            (f"{gm} capture --link a:b --seconds 5 -w a-b.pcap", "what the link carried, decrypted: tcpdump -r a-b.pcap -A"),
            (f"{gm} trace REQUEST_ID", "one request's way across the hops (the live view names a recent one)"),
            (f"{gm} links", "every link: rate, success, p50/p99, retries, mesh errors by hop"),
            (f"{gm} check", "a doctor: one line per check, with the fix for any that fails"),
            (f"{gm} dashboard", "the dashboard in your browser (a one-minute, single-use login link)"),
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
                say(f"[red]not ready after {self.opts.startup_timeout:.0f} s: {name}", markup=False)
                say("[red]  (see the logs; the control plane's view: glassmesh status)")
        if any(c.name.endswith("-proxy") for c in dead) or (not dead and any("proxy" in f for f in failing)):
            say("[red]the proxies failed to start[/]; see above and the logs")
        if any(c.name == "control" for c in dead):
            say("[red]the control plane failed to start[/]; see above and logs/control.log")

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

    def _pushed(self, p: Push) -> None:
        what = describe_push(p)
        self.say(f"control plane pushed snapshot v{p.version} to {p.host}" + (f": {what}" if what else
                                                                              " (its own instances' state)"))

    # --- the instance that comes and goes ------------------------------------------------------------

    def _bounce(self, b: Bounce) -> None:
        """Stop the instance at b.stop_at, watch its traffic move, start it at b.start_at, watch it come back."""
        assert self.procs is not None and self.watch is not None
        svc, host = b.service, b.host
        other = ", ".join(sorted({i.host for i in self.topo.services[svc].instances} - {host}))  # type: ignore[union-attr]
        # A retry stays in the subset the split chose: the other instances of the same subset.
        same = sorted(h for h, sub in _SUBSET_OF.items() if sub == _SUBSET_OF.get(host) and h != host)
        retried_on = ", ".join(same) if svc == CANARY_SERVICE and same else other
        if self.stop.wait(max(0.0, self.t0 + b.stop_at - time.monotonic())):
            return
        child = self.instances[(svc, host)]
        self.say(f">>> stopping {svc} on {host} (pid {child.pid}, SIGTERM): it answers what it has, closes its "
                 f"connections and exits; its proxy's health check will fail ...", style="bold")
        t_stop = time.monotonic()
        rc = self.procs.stop_child(child)
        b.stopped, b.stopped_pid = time.monotonic() - self.t0, child.pid
        self.say(f">>> {svc} on {host} exited (status {rc}) after {time.monotonic() - t_stop:.1f} s; requests "
                 f"host1 sends there meanwhile are retried on {retried_on}", style="bold")
        push = self.watch.wait_for(lambda v: host not in v.get(FRONT_HOST, {}).get(svc, [host]), 15, self.stop)
        if push is not None:
            b.out, b.out_after = push, push.at - t_stop
            self.say(f">>> {svc} on {host} is out: snapshot v{push.version} pushed to host1 {b.out_after:.1f} s "
                     f"after the stop; {svc} is served by {other} alone", style="bold")
        elif not self.stop.is_set():
            b.notes.append(f"host1's snapshot still listed {svc} on {host} 15 s after the stop")
            self.say(f">>> {b.notes[-1]}", style="yellow")
        if self.stop.wait(max(0.0, self.t0 + b.start_at - time.monotonic())):
            return
        new = self.procs.restart(child)
        self.instances[(svc, host)] = new
        t_start = time.monotonic()
        b.started, b.started_pid = t_start - self.t0, new.pid
        self.say(f">>> starting {svc} on {host} again (pid {new.pid}) ...", style="bold")
        push = self.watch.wait_for(lambda v: host in v.get(FRONT_HOST, {}).get(svc, []), 15, self.stop)
        if push is not None:
            b.back, b.back_after = push, push.at - t_start
            self.say(f">>> {svc} on {host} is back: its health check turned green, snapshot v{push.version} "
                     f"pushed to host1 {b.back_after:.1f} s after the start; traffic splits again", style="bold")
        elif not self.stop.is_set():
            b.notes.append(f"host1's snapshot did not list {svc} on {host} again within 15 s of its start")
            self.say(f">>> {b.notes[-1]}", style="yellow")
        # This thread started the new process, which is asked to die with it (PR_SET_PDEATHSIG follows
        # the thread, not the process): it lives until the demo stops.
        self.stop.wait()

    # --- the canary ----------------------------------------------------------------------------------

    def _canary(self, steps: list[CanaryStep]) -> None:
        """At each step, write mesh.yaml with v2's new share and `glassmesh apply` it, as an operator would."""
        assert self.watch is not None and self.topo is not None and self.topo.mesh_yaml is not None
        path = self.topo.mesh_yaml
        env = {**os.environ, "GLASSMESH_CONTROL": CONTROL_URL, "GLASSMESH_CREDENTIAL": self.operator.path}
        for step in steps:
            if self.stop.wait(max(0.0, self.t0 + step.at - time.monotonic())):
                return
            with open(path, "w") as f:
                f.write(canary_yaml(step.percent))
            self.say(f">>> canary: {CANARY_SERVICE} v2 to {step.percent}% of A's calls: glassmesh apply -f "
                     f"{os.path.basename(path)}", style="bold")
            t_apply = time.monotonic()
            seen = len(self.watch.pushes)
            try:
                done = subprocess.run(glassmesh_argv("apply", "-f", path), env=env, capture_output=True,
                                      text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired) as e:
                step.error = f"glassmesh apply failed: {e}"
                self.say(f">>> {step.error}", style="red")
                continue
            step.applied = time.monotonic() - self.t0
            last = (done.stdout.strip().splitlines() or [""])[-1]
            found = re.search(r"version (\d+)", last)
            if done.returncode != 0 or found is None:
                step.error = f"glassmesh apply exited {done.returncode}: {(done.stdout + done.stderr).strip()[-300:]}"
                self.say(f">>> {step.error}", style="red")
                continue
            step.version = int(found.group(1))
            self.say(f">>> {last}", style="bold")
            want = f"v1 {100 - step.percent:g}%, v2 {step.percent:g}%"
            push = self.watch.wait_for(lambda v: True, 15, self.stop,
                                       lambda p, want=want: p.host == FRONT_HOST  # type: ignore[misc]
                                       and p.splits.get(CANARY_SERVICE) == want, since=seen)
            if push is not None:
                step.push, step.push_after = push, push.at - t_apply
                self.say(f">>> host1's proxy runs the {step.percent}% split: snapshot v{push.version}, "
                         f"{step.push_after:.1f} s after the apply", style="bold")
                step.served = self._served_by_subset()
            elif not self.stop.is_set():
                step.error = f"host1's snapshot did not carry the {step.percent}% split within 15 s of the apply"
                self.say(f">>> {step.error}", style="yellow")

    def _served_by_subset(self) -> dict[str, float]:
        """Requests each subset of B answered A since the traffic started, as the proxies count them."""
        assert self.topo is not None
        link = ("a", CANARY_SERVICE)
        now, before = _scrape_all(self.topo).served.get(link, {}), self.baseline.served.get(link, {})
        return by_subset({h: n - before.get(h, 0.0) for h, n in now.items()})

    # --- the live view ------------------------------------------------------------------------------

    def _watch(self, topo: Topology, logs: str) -> int:
        assert self.procs is not None
        h1 = topo.host(FRONT_HOST)
        stats_path = os.path.join(logs, "traffic-stats.json")
        baseline = self.baseline = _scrape_all(topo)
        a_addr = h1.instances["a"][0]
        self.traffic = self.procs.start("traffic", [
            sys.executable, "-m", "glassmesh.demo.traffic", "--target", a_addr, "--rate", str(self.opts.rate),
            "--connections", str(self.opts.connections), "--stats", stats_path,
        ])
        self.t0 = start = prev_t = time.monotonic()
        how_long = f"for {self.opts.duration:g} s" if self.opts.duration > 0 else "until Ctrl-C"
        self.console.print(f"traffic: {self.opts.rate:g} req/s to A over {self.opts.connections} keep-alive "
                           f"connections, {how_long}")
        plan = bounce_schedule(self.opts.duration)
        bouncer: threading.Thread | None = None
        if plan is not None:
            self.bounce = Bounce(BOUNCE[0], BOUNCE[1], *plan)
            self.console.print(f"at {plan[0]:g} s {BOUNCE[0]} on {BOUNCE[1]} is stopped, at {plan[1]:g} s started "
                               "again: watch \"served by\" and the snapshot versions")
            bouncer = threading.Thread(target=self._bounce, args=(self.bounce,), name="bounce", daemon=True)
            bouncer.start()
        else:
            self.console.print(f"(runs of {MIN_BOUNCE_DURATION:g} s or more also stop {BOUNCE[0]} on {BOUNCE[1]} "
                               "and start it again)")
        self.canary = [CanaryStep(at, pct) for at, pct in canary_schedule(self.opts.duration)]
        steps = ", ".join(f"{c.percent}% at {c.at:g} s" for c in self.canary)
        self.console.print(f"canary: {CANARY_SERVICE} v2 (host3) gets 0% of A's calls, then {steps}, each by "
                           "`glassmesh apply -f mesh.yaml`: watch \"subsets\"")
        canary = threading.Thread(target=self._canary, args=(self.canary,), name="canary", daemon=True)
        canary.start()
        if not self.console.is_terminal:  # the live table ends with it; printed lines say it once
            self.console.print(dashboard_hint(), markup=False, highlight=False)
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
                retried = max(0.0, cur.retried - prev.retried) if cur.outbound is not None else 0.0
                traffic = _read_json(stats_path)
                if live is not None:
                    live.update(_table(rows, traffic, cur.err, now_t - start, retried), refresh=True)
                else:
                    self._print_lines(rows, traffic, cur.err, now_t - start, retried)
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
        self.stop.set()  # ends the bounce thread if it is still waiting
        if bouncer is not None:
            bouncer.join(20)
        canary.join(20)
        final = _scrape_all(topo)
        rc = self._summary(final if final.outbound is not None else prev, baseline, time.monotonic() - start,
                           _read_json(stats_path))
        if died:
            self.console.print("[red]exited during the run: " + ", ".join(c.name for c in died))
        return 1 if died else rc

    def _print_lines(self, rows: list[Row], traffic: dict[str, Any] | None, err: str | None,
                     elapsed: float, retried: float = 0.0) -> None:
        out = []
        for name, f, spread in rows:
            if f is None:
                out.append(f"[{elapsed:5.0f}s] {name:8} no traffic seen yet")
            else:
                subsets = f"subsets {_fmt_spread(by_subset(spread))}  " if name == CANARY_LINK else ""
                out.append(f"[{elapsed:5.0f}s] {name:8} {f.rate or 0:6.1f} req/s  success {m.fmt_pct(f.success):>6}  "
                           f"p50 {m.fmt_ms(f.p50):>9}  p99 {m.fmt_ms(f.p99):>9}  {_mtls(f)}  "
                           f"{subsets}served by {_fmt_spread(spread)}")
        if retried:
            out.append(f"[{elapsed:5.0f}s] {_retried_line(retried)}")
        if err:
            out.append(f"[{elapsed:5.0f}s] metrics: {err}")
        if traffic:
            out.append(f"[{elapsed:5.0f}s] {_traffic_line(traffic)}")
            rid = traffic.get("recent_request_id")
            if rid and not self.trace_hinted:  # the live table shows these always; printed lines say them once
                self.trace_hinted = True
                out += [look_hint(), trace_hint(rid)]
        for line in out:
            self.console.print(line, markup=False, highlight=False)

    def _summary(self, final: Scrape, baseline: Scrape, elapsed: float, traffic: dict[str, Any] | None) -> int:
        say = self.console.print
        say(f"[bold]summary[/] ({elapsed:.1f} s, as host1's proxy counted them):")
        rc = 0
        failed: list[str] = []
        total_failed = 0.0
        for name, f, spread in _rows(final, baseline, elapsed):
            if f is None or f.requests == 0:
                say(f"  {name}: no requests seen", markup=False)
                rc = 1
                continue
            say(f"  {name}: {f.requests:.0f} requests, {f.rate or 0:.1f} req/s, success {m.fmt_pct(f.success)}, "
                f"p50 {m.fmt_ms(f.p50)}, p99 {m.fmt_ms(f.p99)}, {_mtls(f)} ({f.handshakes:.0f} handshakes), "
                f"served by {_fmt_spread(spread)}", markup=False)
            bad = round(f.requests * (1 - (f.success if f.success is not None else 1.0)))
            total_failed += bad
            failed.append(f"{bad} of {f.requests:.0f} {name}")
            if name == CANARY_LINK:
                rc |= self._canary_summary(by_subset(spread))
        if traffic:
            say(f"  {_traffic_line(traffic)}", markup=False)
            bad = int(traffic.get("failed", 0))
            total_failed += bad
            failed.insert(0, f"{bad} of {traffic.get('done', 0)} client -> a")
        else:
            say("  client -> a: the traffic generator left no counts", markup=False)
            rc = 1
        retried = max(0.0, final.retried - baseline.retried)
        if self.bounce is not None:
            rc |= self._bounce_summary(self.bounce, retried)
        elif retried:
            say(f"  {_retried_line(retried)}", markup=False)
        style = "green" if total_failed == 0 else "red"
        say(f"  [{style}]failed requests: {total_failed:.0f}[/] ({', '.join(failed)})")
        if total_failed:
            rc = 1
        if rc:
            say("[red]the demo did not run clean: see above and the logs")
        return rc

    def _canary_summary(self, served: dict[str, float]) -> int:
        """What each subset served in all, then in each phase of the canary (between the pushes of its steps)."""
        say = self.console.print

        def shares(counts: dict[str, float]) -> str:
            total = sum(counts.values()) or 1.0
            return ", ".join(f"{s} {n:.0f} ({100 * n / total:.1f}%)" for s, n in sorted(counts.items())) or "none"

        say(f"  canary {CANARY_SERVICE}, requests each subset served: {shares(served)}", markup=False)
        rc = 0
        prev: dict[str, float] = {}
        phase, since = 0, "from the start"
        for c in self.canary:
            if c.push is None or c.served is None:
                if c.error is not None:
                    say(f"    [red]{c.percent}%: {c.error}", markup=False)
                    rc = 1
                else:
                    say(f"    {c.percent}%: not reached (the run ended before {c.at:g} s)", markup=False)
                continue
            delta = {k: c.served.get(k, 0.0) - prev.get(k, 0.0) for k in sorted(set(c.served) | set(prev))}
            say(f"    v2 at {phase}% ({since}): {shares(delta)}", markup=False)
            phase, prev = c.percent, c.served
            since = (f"from {c.applied:.1f} s: config version {c.version}, run by host1's proxy {c.push_after:.1f} s "
                     f"after the apply, snapshot v{c.push.version}")
        delta = {k: served.get(k, 0.0) - prev.get(k, 0.0) for k in sorted(set(served) | set(prev))}
        say(f"    v2 at {phase}% ({since}): {shares(delta)}", markup=False)
        return rc

    def _bounce_summary(self, b: Bounce, retried: float) -> int:
        say = self.console.print
        who = f"{b.service} on {b.host}"
        if b.stopped is None:
            say(f"  {who}: not stopped (the run ended before {b.stop_at:g} s)", markup=False)
            return 0
        parts = [f"stopped at {b.stopped:.1f} s (pid {b.stopped_pid})"]
        if b.out is not None:
            parts.append(f"out of host1's snapshot {b.out_after:.1f} s later (v{b.out.version})")
        if b.started is not None:
            parts.append(f"started at {b.started:.1f} s (pid {b.started_pid})")
        if b.back is not None:
            parts.append(f"back in host1's snapshot {b.back_after:.1f} s later (v{b.back.version})")
        say(f"  {who}: " + ", ".join(parts) + f"; host1's proxy retried {retried:.0f} requests on another "
            "endpoint meanwhile", markup=False)
        for n in b.notes:
            say(f"  [yellow]{n}", markup=False)
        if self.stop.is_set() and self.opts.duration <= 0:
            return 0  # Ctrl-C may come at any point of the bounce
        if b.started is not None and b.back is None:
            say(f"  [red]{who} did not come back")
            return 1
        if b.out is None:
            say(f"  [red]{who}'s traffic did not move")
            return 1
        return 0


# --- helpers (pure or nearly) -------------------------------------------------------------------------


def _front_endpoints(topo: Topology) -> dict[str, list[str]]:
    """service -> hosts of its endpoints, in the snapshot host1's proxy runs."""
    try:
        status, snap = http_json(topo.host(FRONT_HOST).admin, "GET", "/config", timeout=1.0)
    except (OSError, http.client.HTTPException):
        return {}
    return {s: sorted(h) for s, h in _endpoints(snap).items()} if status == 200 and snap else {}


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
    served: dict[m.Link, dict[str, float]]  # link -> host -> inbound requests answered 2xx so far
    err: str | None = None
    retried: float = 0.0  # host1's outbound requests retried on another endpoint so far


Row = tuple[str, m.Figures | None, dict[str, float]]


def _metrics_text(admin: str) -> tuple[str | None, str | None]:
    try:
        status, body = http_get(admin, "/metrics", timeout=2)
    except (OSError, http.client.HTTPException) as e:
        return None, f"cannot scrape {admin}/metrics: {e}"
    if status != 200:
        return None, f"{admin}/metrics answered {status}"
    return body.decode("utf-8", "replace"), None


def _scrape_all(topo: Topology) -> Scrape:
    text, err = _metrics_text(topo.host(FRONT_HOST).admin)
    outbound: dict[m.Link, m.LinkSample] | None = None
    retried = 0.0
    if text is not None:
        try:
            outbound = m.parse_links(text, "outbound")
            retried = m.retried(m.parse_mesh_errors(text, "outbound"))
        except ValueError as e:
            err = f"cannot parse {topo.host(FRONT_HOST).admin}/metrics: {e}"
    served: dict[m.Link, dict[str, float]] = {}
    for h in topo.hosts.values():
        htext, _ = _metrics_text(h.admin)
        try:
            inbound = m.parse_links(htext, "inbound") if htext is not None else {}
        except ValueError:
            inbound = {}
        for link, sample in inbound.items():
            # Only what the host's app answered: a 502 "app down" that host1 retried elsewhere is not service.
            served.setdefault(link, {})[h.name] = sample.requests.get("2xx", 0.0)
    return Scrape(outbound, served, err, retried)


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


CANARY_LINK = f"a -> {CANARY_SERVICE}"
_SUBSET_OF = subsets_by_host(demo_hosts())


def by_subset(spread: dict[str, float]) -> dict[str, float]:
    """Requests per subset, from requests per host: each host's instance of B is in one subset (its labels)."""
    out: dict[str, float] = {}
    for host, n in spread.items():
        name = _SUBSET_OF.get(host)
        if name is not None:
            out[name] = out.get(name, 0.0) + n
    return dict(sorted(out.items()))


def _fmt_spread(spread: dict[str, float]) -> str:
    return ", ".join(f"{h} {n:.0f}" for h, n in spread.items()) or "-"


def _mtls(f: m.Figures) -> str:
    return f"mTLS {f.tls_version or 'yes'}" if f.mtls else "NOT mTLS"


def _retried_line(n: float) -> str:
    return (f"failover: host1's proxy retried {n:.0f} request{'s' * (n != 1)} on another endpoint "
            "(the endpoint's app was down; nothing had reached an app)")


def _traffic_line(t: dict[str, Any]) -> str:
    def ms(v: Any) -> str:
        return f"{v:.1f} ms" if isinstance(v, int | float) else "-"

    return (f"client -> a (traffic generator): {t.get('done', 0)} done, {t.get('ok', 0)} ok, "
            f"{t.get('failed', 0)} failed, p50 {ms(t.get('p50_ms'))}, p99 {ms(t.get('p99_ms'))}, "
            f"{t.get('connections_opened', 0)} connections opened")


def look_hint() -> str:
    """Into the running mesh from another terminal: the live requests of a link, and its bytes as a pcap."""
    gm = _cli()
    return f"look inside: {gm} tap --from a --to b --headers   |   {gm} capture --link a:b --seconds 5 -w a-b.pcap"


def trace_hint(request_id: str) -> str:
    """A request A made a moment ago, to follow across the hops with `glassmesh trace`."""
    return f"follow a request A just made to B across the hops: {_cli()} trace {request_id}"


def dashboard_hint() -> str:
    """The live view's last line: the one command that opens all of this in a browser."""
    return f"see it in your browser (service graph, link matrix, live tap): {_cli()} dashboard"


def _table(rows: list[Row], traffic: dict[str, Any] | None, err: str | None, elapsed: float,
           retried: float = 0.0) -> Table:
    t = Table(title=f"glassmesh demo: links seen by host1's proxy ({elapsed:.0f} s)", title_justify="left")
    for col in ("link", "req/s", "success", "p50", "p99", "mTLS", "subsets (req/s)", "served by (last second)"):
        t.add_column(col, justify="right" if col in ("req/s", "success", "p50", "p99") else "left")
    for name, f, spread in rows:
        subsets = _fmt_spread(by_subset(spread)) if name == CANARY_LINK else "-"
        if f is None:
            t.add_row(name, "-", "-", "-", "-", "no traffic yet", "-", "-")
        else:
            ok = f.success is None or f.success >= 0.99
            t.add_row(name, f"{f.rate or 0:.1f}", f"[{'green' if ok else 'red'}]{m.fmt_pct(f.success)}",
                      m.fmt_ms(f.p50), m.fmt_ms(f.p99),
                      f"[green]{_mtls(f)}" if f.mtls else f"[red]{_mtls(f)}", subsets, _fmt_spread(spread))
    captions = []
    if retried:
        captions.append(f"[yellow]{_retried_line(retried)}")
    if traffic:
        captions.append(_traffic_line(traffic))
    if err:
        captions.append(f"[red]{err}")
    captions.append("Ctrl-C stops every process")
    captions.append(look_hint())
    rid = traffic.get("recent_request_id") if traffic else None
    if rid:
        captions.append(trace_hint(rid))
    captions.append(dashboard_hint())
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
