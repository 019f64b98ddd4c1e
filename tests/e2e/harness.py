"""End-to-end harness: a CA, per-host snapshots and real proxy and app processes on loopback.

A `Mesh` lives in its own temporary directory and on its own loopback
addresses, picked at random in 127.77.0.0/16 (one address per host; each
pytest-xdist worker has its own stripe of it), so tests never collide with
each other or with a running demo (127.0.0.11-13). Every
process is started in its own session and stopped by PID (with whatever
children it has) in `Mesh.stop`, which the fixtures call even when a test
fails; it fails the test when a process does not exit 0 within a few seconds
of SIGTERM or its log holds a traceback.

The client side (raw HTTP, TLS clients, metrics, the relay) is in client.py;
its names are re-exported here so tests import one module.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glassmesh.ca import CA, init_ca
from tests.e2e.client import (
    HttpConn,
    Relay,
    Response,
    Sample,
    app_headers,
    client_context,
    eventually,
    get,
    has_series,
    mesh_error,
    metric,
    parse_metrics,
    split,
    trail,
)

__all__ = [
    "App", "Host", "HttpConn", "Mesh", "Proc", "Relay", "Response", "RssSampler", "Sample", "app_headers",
    "client_context", "dead_address", "eventually", "free_port", "fresh_ip", "get", "has_series", "mesh_error", "metric",
    "parse_metrics", "split", "trail",
]

REPO = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().with_name("apps.py")
PROXY_CMD = [sys.executable, "-c", "from glassmesh.cli.main import main; main()", "proxy"]

INBOUND_PORT = 4143
ADMIN_PORT = 4191
OUTBOUND_PORT0 = 4140
APP_PORT0 = 18080
TCP_LINK_PORT0 = 15432


# --------------------------------------------------------------------------- addresses


def _bindable(ip: str) -> bool:
    """True when nothing listens on the ports a host of ours would use on `ip`."""
    for port in (INBOUND_PORT, ADMIN_PORT, OUTBOUND_PORT0, APP_PORT0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((ip, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


_taken: set[str] = set()


def _worker_octets() -> range:
    """The third octets this process may pick from: a stripe of its own under pytest-xdist.

    Workers run tests at the same time and each checks only that an address is free *now*; an
    address handed out but not yet bound (or kept unbound on purpose, `dead_address`) would be free
    to the other worker too. Striping 127.77.0.0/16 by worker number makes that impossible.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ... (unset: the whole range)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return range(0, 256)
    return range(int(worker[2:]) % count, 256, count)


def fresh_ip() -> str:
    """A random loopback address in 127.77.0.0/16 that this process has not handed out and is free."""
    rnd = random.SystemRandom()
    octets = _worker_octets()
    for _ in range(1000):
        ip = f"127.77.{rnd.choice(octets)}.{rnd.randrange(1, 255)}"
        if ip not in _taken and _bindable(ip):
            _taken.add(ip)
            return ip
    raise RuntimeError("no free loopback address in 127.77.0.0/16")


def _port_candidates() -> list[int]:
    """Ports this process may hand out: outside the kernel's ephemeral range, in this worker's stripe.

    A port picked by binding port 0 comes from the ephemeral range, where any process's next outgoing
    connection (or another bind to port 0) may take it between the pick and the bind of the process the
    test starts; a port below or above that range is taken only by a bind that names it.
    """
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    stripe = int(worker[2:]) % count if worker.startswith("gw") and count > 1 else 0
    return [p for p in range(20000, 65536) if not lo <= p <= hi and p % max(count, 1) == stripe]


_ports_taken: set[int] = set()


def _port_free(ip: str, port: int, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


def free_port(ip: str = "127.0.0.1", count: int = 1, udp: bool = False) -> int:
    """A port P free on `ip` (P..P+count-1 when count > 1; for UDP too when `udp`), never handed out before
    by this process, and from outside the ephemeral range (see _port_candidates): nothing else picks it."""
    rnd = random.SystemRandom()
    candidates = _port_candidates()
    for _ in range(1000):
        if not candidates:
            break
        p = rnd.choice(candidates)
        ports = range(p, p + count)
        if ports[-1] > 65535 or any(q in _ports_taken for q in ports):
            continue
        if all(_port_free(ip, q, udp) for q in ports):
            _ports_taken.update(ports)
            return p
    raise RuntimeError(f"no free port on {ip} outside the ephemeral range")


def dead_address() -> str:
    """An address where nothing listens (a fresh loopback IP, never bound)."""
    return f"{fresh_ip()}:{INBOUND_PORT}"


# --------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    """All descendants of pid (scanning /proc), deepest last."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


STOP_GRACE_S = 5.0  # teardown: a process exits within this of SIGTERM, with status 0
TRACEBACK = "Traceback (most recent call last)"


class Proc:
    """A child process with its output in a log file; stopped by PID with its descendants.

    `stop` judges how it ended, and `Mesh.stop` fails the test on what it
    found: a process that needed more than STOP_GRACE_S after SIGTERM, or
    exited with a status other than 0, or whose log holds a Python traceback.
    A test that ends a process on purpose in another way (SIGKILL, or a
    start that must fail) says so with `kill()` or `expect_exit()`.
    """

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.popen = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=REPO, env=full_env,
        )
        self.pid = self.popen.pid
        self.exit_judged = True  # False after kill()/expect_exit(): how it ends is the test's business
        self.problems: list[str] = []
        self._stopped = False

    def alive(self) -> bool:
        return self.popen.poll() is None

    def expect_exit(self) -> None:
        """This process is meant to end otherwise than by a clean SIGTERM (it must fail, or is killed)."""
        self.exit_judged = False

    def kill(self) -> None:
        """SIGKILL it by PID (on purpose: teardown does not count that against it) and reap it."""
        self.expect_exit()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(10)

    def log_text(self, tail: int = 150) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return f"<no log: {e}>"
        cut = lines[-tail:]
        prefix = [f"... ({len(lines) - tail} earlier lines)"] if len(lines) > tail else []
        return "\n".join(prefix + cut)

    def pids(self) -> list[int]:
        return [self.pid, *_children(self.pid)] if self.alive() else []

    def stop(self, timeout: float = STOP_GRACE_S) -> int | None:
        """SIGTERM by PID, up to `timeout` s, then SIGKILL to it and its descendants; its exit status.

        What went wrong (judged unless expect_exit/kill) goes into `problems`.
        """
        if self.alive():
            pids = self.pids()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            t0 = time.monotonic()
            try:
                self.popen.wait(timeout)
                if self.exit_judged and self.popen.returncode != 0:
                    self.problems.append(f"{self.name} (pid {self.pid}) exited with status {self.popen.returncode} "
                                         f"{time.monotonic() - t0:.1f} s after SIGTERM")
            except subprocess.TimeoutExpired:
                if self.exit_judged:
                    self.problems.append(f"{self.name} (pid {self.pid}) still running {timeout:g} s after SIGTERM "
                                         "(SIGKILLed)")
            left = [p for p in [*_children(self.pid), *pids] if p != self.pid and _alive(p)]
            for p in [self.pid, *left]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        elif self.exit_judged and self.popen.returncode != 0 and not self._stopped:
            self.problems.append(f"{self.name} (pid {self.pid}) had exited with status {self.popen.returncode} "
                                 "before it was stopped")
        self._stopped = True  # a second stop() does not judge the same exit again
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode

    def traceback(self) -> str | None:
        """The first Python traceback in its log (a few lines of it), if any."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        i = text.find(TRACEBACK)
        if i < 0:
            return None
        lines = text[i:].splitlines()
        # Up to the exception's own line: the first one after the header that is not indented.
        end = next((k for k, line in enumerate(lines[1:], 1) if line and not line.startswith(" ")), len(lines) - 1)
        return "\n".join(lines[:min(end + 1, 40)])

    def judge(self) -> list[str]:
        """What teardown holds against it: problems at stop, and a traceback in its log."""
        out = list(self.problems)
        tb = self.traceback()
        if tb is not None:
            out.append(f"{self.name}: its log {self.log_path} holds a traceback:\n{tb}")
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def wait_port(addr: str, proc: Proc | None = None, timeout: float = 10.0) -> None:
    host, port = split(addr)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {addr} after {timeout}s" + (
                f"; {proc.name} log:\n{proc.log_text()}" if proc else ""))
        time.sleep(0.05)


# --------------------------------------------------------------------------- relay and RSS


class RssSampler:
    """Samples VmRSS of processes (and their children) in a thread; `peak_kb` maps pid -> max seen."""

    def __init__(self, procs: list[Proc], interval: float = 0.05) -> None:
        self.procs = procs
        self.interval = interval
        self.peak_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in self.procs:
                for pid in p.pids():
                    kb = rss_kb(pid)
                    if kb is not None:
                        self.names[pid] = p.name
                        self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), kb)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> str:
        return ", ".join(f"{self.names[p]}[{p}]={kb / 1024:.1f}MB" for p, kb in sorted(self.peak_kb.items()))


# --------------------------------------------------------------------------- the mesh


@dataclass
class LocalSpec:
    name: str
    protocol: str
    instances: list[str] = field(default_factory=list)
    outbound: str | None = None
    socket: str | None = None


class Host:
    """One proxy host on its own loopback address; what it runs is declared, then `Mesh.start` runs it."""

    def __init__(self, mesh: Mesh, name: str, ip: str) -> None:
        self.mesh = mesh
        self.name = name
        self.ip = ip
        self.inbound = f"{ip}:{INBOUND_PORT}"
        self.admin = f"{ip}:{ADMIN_PORT}"
        self.locals: dict[str, LocalSpec] = {}
        self.tcp_links: list[dict[str, str]] = []
        self.service_overrides: dict[str, dict[str, Any]] = {}
        # Labels of this host's endpoint of a service (its service entry's `labels:` in mesh.yaml).
        self.labels: dict[str, dict[str, str]] = {}
        self.timeouts: dict[str, int] = {}
        self.limits: dict[str, int] = {}
        self.proxy_args: list[str] = []  # extra `glassmesh proxy` flags
        self.version = 1
        self.proxy: Proc | None = None
        self.snapshot_path: Path | None = None
        self._next_outbound = OUTBOUND_PORT0
        self._next_app = APP_PORT0
        self._next_tcp = TCP_LINK_PORT0

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip}>"

    def _local(self, service: str, protocol: str = "http") -> LocalSpec:
        if service not in self.locals:
            self.locals[service] = LocalSpec(service, protocol)
        return self.locals[service]

    def client(self, service: str) -> str:
        """Give local service `service` an outbound listener here; returns its address."""
        spec = self._local(service)
        if spec.outbound is None:
            spec.outbound = f"{self.ip}:{self._next_outbound}"
            self._next_outbound += 10
        return spec.outbound

    def outbound(self, service: str = "a") -> str:
        spec = self.locals[service]
        assert spec.outbound is not None, f"{service} has no outbound on {self.name}"
        return spec.outbound

    def app_port(self) -> int:
        p = self._next_app
        self._next_app += 1
        return p

    def http_app(self, service: str, name: str | None = None, delay_ms: int = 0, fail_status: int = 0) -> App:
        """Start an HTTP echo app on this host and register it as an instance of `service`.

        delay_ms: it waits this long before each answer; fail_status: it answers every request so.
        """
        addr = f"{self.ip}:{self.app_port()}"
        extra = (["--delay-ms", str(delay_ms)] if delay_ms else []) + (
            ["--fail-status", str(fail_status)] if fail_status else [])
        app = self.mesh.start_app("http", addr, name or f"{service}@{self.name}", extra=extra)
        self.add_instance(service, addr, "http")
        return app

    def tcp_app(self, service: str, mode: str = "echo", banner: str = "") -> App:
        addr = f"{self.ip}:{self.app_port()}"
        app = self.mesh.start_app("tcp", addr, f"{service}@{self.name}", mode=mode, banner=banner)
        self.add_instance(service, addr, "tcp")
        return app

    def add_instance(self, service: str, addr: str, protocol: str = "http") -> None:
        spec = self._local(service, protocol)
        spec.protocol = protocol
        spec.instances.append(addr)
        self.mesh.protocols[service] = protocol

    def tcp_link(self, source: str, destination: str) -> str:
        self._local(source)
        listen = f"{self.ip}:{self._next_tcp}"
        self._next_tcp += 1
        self.tcp_links.append({"source": source, "listen": listen, "destination": destination})
        return listen

    def set_service(self, name: str, endpoints: list[tuple[str, str]], protocol: str = "http") -> None:
        """Override the endpoints this host's snapshot lists for `name` (address, host) pairs."""
        self.service_overrides[name] = {
            "name": name, "protocol": protocol,
            "endpoints": [{"address": a, "host": h} for a, h in endpoints],
        }

    def snapshot(self) -> dict[str, Any]:
        m = self.mesh
        local_services = []
        for spec in self.locals.values():
            cert, key = m.cert_for(spec.name)
            d: dict[str, Any] = {"name": spec.name, "protocol": spec.protocol, "instances": spec.instances,
                                 "cert": os.path.relpath(cert, m.root), "key": os.path.relpath(key, m.root)}
            if spec.outbound:
                d["outbound"] = spec.outbound
            if spec.socket:
                d["outbound_socket"] = spec.socket
            local_services.append(d)
        services: dict[str, dict[str, Any]] = {}
        for h in m.hosts.values():
            for spec in h.locals.values():
                for _ in spec.instances:
                    svc = services.setdefault(
                        spec.name, {"name": spec.name, "protocol": spec.protocol, "endpoints": []})
                    ep: dict[str, Any] = {"address": h.inbound, "host": h.name}
                    if spec.name in h.labels:
                        ep["labels"] = h.labels[spec.name]
                    svc["endpoints"].append(ep)
        for name, pol in m.policies.items():
            if name in services:
                services[name]["policy"] = pol
        services.update(self.service_overrides)
        extra: dict[str, Any] = {"timeouts": self.timeouts} if self.timeouts else {}
        if self.limits:
            extra["limits"] = self.limits
        if m.peer_protocol:
            extra["peer_protocol"] = m.peer_protocol
        return {
            **extra,
            "version": self.version,
            "host": self.name,
            "trust_domain": m.trust_domain,
            "trust_bundle": os.path.relpath(m.ca_pem, m.root),
            "inbound": self.inbound,
            "admin": self.admin,
            "local_services": local_services,
            "services": sorted(services.values(), key=lambda s: s["name"]),
            "tcp_links": self.tcp_links,
        }

    def write_snapshot(self) -> Path:
        path = self.mesh.root / f"{self.name}.json"
        path.write_text(json.dumps(self.snapshot(), indent=2))
        self.snapshot_path = path
        return path

    def metrics(self) -> list[Sample]:
        r = get(self.admin, "/metrics")
        assert r.status == 200, r
        return parse_metrics(r.body.decode())


@dataclass
class App:
    proc: Proc
    addr: str
    name: str

    def stats(self) -> dict[str, Any]:
        r = get(self.addr, "/__stats")
        assert r.status == 200, r
        return r.json()

    def requests(self) -> int:
        return int(self.stats()["requests"])


class Mesh:
    """Builds and runs a small mesh: `add_host`, declare apps and clients, `start`, then `stop`."""

    def __init__(self, root: Path, trust_domain: str = "glassmesh.local") -> None:
        self.root = Path(root)
        self.trust_domain = trust_domain
        self.ca: CA = init_ca(self.root / "ca", trust_domain)
        self.ca_pem = self.root / "ca" / "ca.pem"
        (self.root / "certs").mkdir()
        (self.root / "logs").mkdir()
        self.hosts: dict[str, Host] = {}
        self.peer_protocol: str | None = None  # "mux" | "http1"; None: the proxy's default
        self.protocols: dict[str, str] = {}
        # Traffic policy by service (a snapshot Policy as JSON: routes, subsets, balance, outlier, limits).
        self.policies: dict[str, dict[str, Any]] = {}
        self.procs: list[Proc] = []
        self._certs: dict[str, tuple[Path, Path]] = {}
        self._closers: list[Callable[[], None]] = []

    # ---- declaring

    def add_host(self, name: str) -> Host:
        h = Host(self, name, fresh_ip())
        self.hosts[name] = h
        return h

    def cert_for(self, service: str) -> tuple[Path, Path]:
        if service not in self._certs:
            self._certs[service] = self.ca.issue("service", service).write(self.root / "certs" / service)
        return self._certs[service]

    # ---- running

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        safe = name.replace("/", "_").replace("@", "_")
        p = Proc(name, args, self.root / "logs" / f"{safe}-{len(self.procs)}.log", env)
        self.procs.append(p)
        return p

    def start_app(self, kind: str, addr: str, name: str, mode: str = "echo", banner: str = "",
                  extra: list[str] | None = None) -> App:
        args = [sys.executable, str(APPS), kind, "--listen", addr, "--name", name, *(extra or [])]
        if kind == "tcp":
            args += ["--mode", mode]
            if banner:
                args += ["--banner", banner]
        p = self.spawn(f"app {name}", args)
        wait_port(addr, p)
        return App(p, addr, name)

    def start_proxy(self, host: Host, workers: int | None = None, wait: bool = True) -> Proc:
        path = host.write_snapshot()
        args = [*PROXY_CMD, "--config", str(path), *host.proxy_args]
        if workers:
            args += ["--workers", str(workers)]
        host.proxy = self.spawn(f"proxy {host.name}", args)
        if wait:
            self.wait_ready(host)
        return host.proxy

    def wait_ready(self, host: Host, timeout: float = 20.0) -> None:
        proc = host.proxy
        assert proc is not None
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(
                    f"proxy {host.name} exited with {proc.popen.returncode} before it was ready:\n{proc.log_text()}")
            try:
                r = get(host.admin, "/ready", timeout=1.0)
                if r.status == 200:
                    return
                last = repr(r)
            except OSError as e:
                last = repr(e)
            time.sleep(0.05)
        raise TimeoutError(f"proxy {host.name} not ready after {timeout}s ({last}):\n{proc.log_text()}")

    def start(self, workers: int | None = None) -> None:
        """Start a proxy for every host that has no proxy yet, then wait until each is ready."""
        todo = [h for h in self.hosts.values() if h.proxy is None]
        for h in todo:
            self.start_proxy(h, workers=workers, wait=False)
        for h in todo:
            self.wait_ready(h)

    def relay(self, target: str) -> Relay:
        r = Relay(f"{fresh_ip()}:{INBOUND_PORT}", target)
        self._closers.append(r.close)
        return r

    def proxies(self) -> list[Proc]:
        return [h.proxy for h in self.hosts.values() if h.proxy is not None]

    def logs(self) -> list[tuple[str, str]]:
        return [(p.name, p.log_text()) for p in self.procs]

    def stop(self) -> None:
        """Stop everything (newest first); AssertionError naming each process that did not stop cleanly.

        Clean: exit status 0 within STOP_GRACE_S of SIGTERM, and no Python
        traceback in its log (see Proc).
        """
        for c in self._closers:
            with contextlib.suppress(Exception):
                c()
        for p in reversed(self.procs):
            with contextlib.suppress(Exception):
                p.stop()
        problems = [x for p in self.procs for x in p.judge()]
        if problems:
            raise AssertionError("teardown: not every process stopped cleanly:\n" + "\n".join(problems))
