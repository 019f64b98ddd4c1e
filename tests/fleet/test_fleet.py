"""Five hosts, each a network namespace, run glassmesh as an operator installs it, and nothing drops.

The whole life of a small fleet, with real processes and real addresses:

- glassmesh comes from wheels built here (`python -m build`, as `make dist`),
  installed into venvs outside the source tree: the older release (built from
  OLD_COMMIT, the first commit whose wire carries versions) and this tree's;
- host1 runs the control plane; hosts 1-5 join with single-use tokens through
  `glassmesh host join`, which writes each host's proxy.yaml and data dir;
- every daemon starts as its systemd unit's ExecStart says (from `glassmesh
  install-units`; systemd is not PID 1 here), and says READY=1 over a
  NOTIFY_SOCKET this test listens on;
- services call each other across namespaces over mutual TLS, under a steady
  load of about 360 requests/s from three hosts;
- under that load every host is upgraded in turn from the older release to
  this one (the new release's proxy started on the same ports, SO_REUSEPORT,
  then SIGTERM to the old one, which drains: the older release cannot hand its
  sockets over), control plane last; then every proxy is restarted in turn as
  `systemctl reload glassmesh-proxy` does it (the unit's ExecReload, `glassmesh
  restart-proxy --pid $MAINPID`: a successor takes over every listening
  socket, systemd hears MAINPID=<new> and READY=1, the old one drains), then
  the control plane; then the control plane is backed up, stopped, restored
  into a fresh data directory and started from it.
- Not one request fails, and no config version is lost.

The "old" release is the last commit before the traffic-policy work (issue 11) landed, so during the
upgrade the fleet really mixes releases: new proxies with an old control plane, and proxies of both
releases calling each other over the mux.

Needs root (namespaces, veth pairs); every namespace, process and directory it
makes is removed at the end, also when it fails.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_seamless_restart import subreaper, wait_pid
from tests.fleet.netns import Fleet, Host, root_namespace_untouched
from tests.packaging import REPO, build_cache, cached_build, export_commit, run, venv, wheel

APPS = REPO / "tests" / "e2e" / "apps.py"
LOAD = Path(__file__).with_name("load.py")
# The older release the fleet starts on: the first commit of main whose control-plane wire and mux
# carry versions (issue 13, point 5). GLASSMESH_FLEET_OLD_COMMIT names another one.
OLD_COMMIT = os.environ.get("GLASSMESH_FLEET_OLD_COMMIT", "5ae7d4e6c83c9df2b7c92a0bed30d02e82cb099f")
RATE = 120.0  # requests/s per load client; three clients
MESH = """\
services:
  - name: probe
    calls: [web]
  - name: web
    port: 18080
    calls: [api]
  - name: api
    port: 18081
    calls: []
hosts:
  - {name: host1, address: "10.213.0.1:4143", services: [probe]}
  - {name: host2, address: "10.213.0.2:4143", services: [web]}
  - {name: host3, address: "10.213.0.3:4143", services: [web]}
  - {name: host4, address: "10.213.0.4:4143", services: [api]}
  - {name: host5, address: "10.213.0.5:4143", services: [api]}
"""
SERVES = {"host1": "probe", "host2": "web", "host3": "web", "host4": "api", "host5": "api"}
APP_PORTS = {"web": 18080, "api": 18081}

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="network namespaces need root and iproute2")


@pytest.fixture(scope="module")
def releases(dist_dir: Path, request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """{"old": venv, "new": venv}: the older release built from OLD_COMMIT (kept in the build cache, keyed
    by its tree), this tree's from the session's `make dist`; each installed from its wheel into a venv
    outside the tree, binary packages only."""
    root = Path(tempfile.mkdtemp(prefix="gm-fleet-rel-"))
    try:
        old = cached_build(build_cache(request.config, tmp_path_factory), export_commit(OLD_COMMIT, root / "old-src"),
                           "--wheel")
        yield {"old": venv(root / "opt-old", "--only-binary=:all:", str(wheel(old))),
               "new": venv(root / "opt-new", "--only-binary=:all:", str(wheel(dist_dir)))}
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Notify:
    """A NOTIFY_SOCKET for one daemon (a path: abstract names are per network namespace)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def wait_for(self, field: str, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {field} on {self.path} within {timeout} s")
            self.sock.settimeout(left)
            try:
                msg = dict(line.split("=", 1) for line in self.sock.recv(4096).decode().split("\n") if "=" in line)
            except TimeoutError:
                continue
            if field in msg:
                return msg

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Daemon:
    """One `glassmesh proxy` or `glassmesh control` process, started as its unit's ExecStart says."""

    def __init__(self, host: Host, argv: list[str], log: Path, notify: Notify, proc: subprocess.Popen[bytes]) -> None:
        self.host, self.argv, self.log, self.notify, self.proc = host, argv, log, notify, proc
        self.pid = proc.pid  # the main process: another one after each seamless restart

    def wait(self, pid: int, timeout: float) -> int | None:
        """Exit status of `pid`, this daemon's first process or a successor (this test is their subreaper)."""
        if pid == self.proc.pid:
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        return wait_pid(pid, timeout)

    def stop(self, timeout: float = 40) -> None:
        """SIGTERM (it drains) and its exit status 0, or AssertionError with its log."""
        os.kill(self.pid, signal.SIGTERM)
        code = self.wait(self.pid, timeout)
        if code is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait(self.pid, 10)
            raise AssertionError(f"{self.argv} still running {timeout} s after SIGTERM:\n{self.tail()}")
        assert code == 0, f"{self.argv} exited {code}:\n{self.tail()}"
        self.notify.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class Ops:
    """What an operator does on the fleet: units, joins, starts, restarts, upgrades."""

    def __init__(self, fleet: Fleet, releases: dict[str, Path]) -> None:
        self.fleet, self.releases = fleet, releases
        self.runs: dict[str, str] = {}  # host -> "old"/"new": the release its daemons start from
        self.counter = 0
        self.control: Daemon | None = None
        self.proxies: dict[str, Daemon] = {}
        self.h1 = fleet.hosts[0]
        self.cred = self.h1.dir / "control-data" / "admin.pem"
        self.events: list[tuple[float, str]] = []  # (time.time(), what was done): read when a request failed
        self.logs: list[tuple[str, Path]] = []  # every daemon's log, replaced ones included

    def note(self, what: str) -> None:
        self.events.append((time.time(), what))

    def timeline(self, failures: list[tuple[float, str]]) -> str:
        """What was done and what failed, in order, with every daemon's lines about draining and errors."""
        t0 = min([t for t, _ in self.events + failures], default=0.0)
        rows = sorted([(t, f"   {w}") for t, w in self.events] + [(t, f"!! {w}") for t, w in failures])
        out = [f"{t - t0:8.3f} {w}" for t, w in rows]
        for name, path in self.logs:
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            said = [x for x in lines if any(k in x.lower() for k in ("drain", "closing", "error", "reset", "traceback"))]
            if said:
                out.append(f"--- {name} ({path.name}), {len(said)} lines about draining or errors, the last 15:")
                out += said[-15:]
        return "\n".join(out)

    def glassmesh(self, host: Host, release: str) -> str:
        return str(self.releases[release] / "bin" / "glassmesh")

    def exec_start(self, host: Host, unit: str, release: str) -> list[str]:
        """The unit's ExecStart, as `glassmesh install-units` of `release` writes it, with /etc/glassmesh
        made this host's config directory (every host of the fleet shares one file system)."""
        units = host.dir / f"units-{release}"
        run(host.cmd([self.glassmesh(host, release), "install-units", "--prefix", str(units)]), 60)
        (path,) = units.rglob(unit)
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.read(path)
        argv = shlex.split(cp["Service"]["ExecStart"])
        assert argv[0] == self.glassmesh(host, release), argv  # the unit runs the release it came with
        return [a.replace("/etc/glassmesh", str(host.dir / "etc")) for a in argv]

    def start(self, host: Host, unit: str, release: str, ready_timeout: float = 60) -> Daemon:
        argv = self.exec_start(host, unit, release)
        self.counter += 1
        notify = Notify(host.dir / f"notify-{self.counter}.sock")
        log = host.dir / f"{unit}-{self.counter}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["NOTIFY_SOCKET"] = str(notify.path)
        proc = host.spawn(argv, log, env=env)
        d = Daemon(host, argv, log, notify, proc)
        self.logs.append((f"{host.name} {unit}", log))
        self.note(f"{host.name} {unit} ({release}) started, pid {proc.pid}")
        try:
            notify.wait_for("READY", ready_timeout)
        except TimeoutError:
            raise AssertionError(f"{host.name} {unit}: no READY=1 within {ready_timeout} s:\n{d.tail()}") from None
        return d

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """A `glassmesh` operator command on host1, against its control plane's loopback API."""
        env = dict(os.environ, GLASSMESH_CONTROL="https://127.0.0.1:4200", GLASSMESH_CREDENTIAL=str(self.cred))
        r = self.h1.run([self.glassmesh(self.h1, self.runs.get("host1", "old")), *args], env=env, stdin=stdin)
        assert r.returncode == 0, f"glassmesh {' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r

    def start_control(self, release: str, data: str = "control-data") -> None:
        h = self.h1
        etc = h.dir / "etc"
        etc.mkdir(exist_ok=True)
        conf = etc / "control.yaml"
        conf.write_text(f"data: {h.dir / data}\nlisten: 127.0.0.1:4200\nproxy_listen: {h.addr}:4201\n")
        conf.chmod(0o600)
        self.control = self.start(h, "glassmesh-control.service", release)

    def join(self, host: Host, release: str) -> None:
        doc = json.loads(self.cli("host", "add", host.name, "--services", SERVES[host.name], "--json").stdout)
        run(host.cmd([self.glassmesh(host, release), "host", "join", "--control", f"https://{self.h1.addr}:4201",
                       "--token", doc["token"], "--ca-sha256", doc["ca_sha256"], "--host", host.name,
                       "--config-dir", str(host.dir / "etc"), "--data", str(host.dir / "data")]), 120)
        assert (host.dir / "etc" / "proxy.yaml").stat().st_mode & 0o777 == 0o600
        assert (host.dir / "data").stat().st_mode & 0o777 == 0o700

    def reload_proxy(self, host: Host) -> None:
        """`systemctl reload glassmesh-proxy`: the unit's ExecReload with $MAINPID, in the host's namespace."""
        d = self.proxies[host.name]
        units = host.dir / f"units-{self.runs[host.name]}"
        (path,) = units.rglob("glassmesh-proxy.service")
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        cp.read(path)
        argv = [a.replace("$MAINPID", str(d.pid)) for a in shlex.split(cp["Service"]["ExecReload"])]
        assert argv[0] == self.glassmesh(host, self.runs[host.name]), argv
        r = host.run(argv, timeout=120)
        assert r.returncode == 0, f"{host.name}: {argv} exited {r.returncode}:\n{r.stdout}\n{r.stderr}\n{d.tail()}"
        msg = d.notify.wait_for("MAINPID", 30)
        new = int(msg["MAINPID"])
        assert msg.get("READY") == "1" and new != d.pid, msg
        old, d.pid = d.pid, new
        self.note(f"{host.name}: reloaded, pid {old} -> {new}")
        assert d.wait(old, 40) == 0, f"{host.name}: the old proxy (pid {old}) did not drain and exit 0:\n{d.tail()}"
        self.note(f"{host.name}: the old proxy (pid {old}) drained and exited")

    def replace_proxy(self, host: Host, release: str) -> None:
        """A seamless restart: a new proxy on the same ports (SO_REUSEPORT), then SIGTERM to the old one."""
        old = self.proxies[host.name]
        self.proxies[host.name] = self.start(host, "glassmesh-proxy.service", release)
        self.note(f"{host.name}: SIGTERM to the old proxy (pid {old.pid})")
        old.stop()
        self.note(f"{host.name}: the old proxy (pid {old.pid}) drained and exited")
        self.runs[host.name] = release

    def backup_and_restore(self) -> None:
        """Back up while serving, stop, restore into a fresh data dir, and start the control plane from that."""
        h, glassmesh = self.h1, self.glassmesh(self.h1, self.runs["host1"])
        secret = h.dir / "backup.passphrase"
        secret.write_text("correct horse battery staple\n")
        secret.chmod(0o600)
        backup = h.dir / "control.backup"
        run(h.cmd([glassmesh, "control", "backup", str(backup), "--data", str(h.dir / "control-data"),
                   "--passphrase-file", str(secret)]), 120)
        assert self.control is not None
        self.control.stop()
        run(h.cmd([glassmesh, "control", "restore", str(backup), "--data", str(h.dir / "restored-data"),
                   "--passphrase-file", str(secret)]), 120)
        self.start_control(self.runs["host1"], data="restored-data")

    def history(self) -> list[int]:
        return [v["version"] for v in json.loads(self.cli("history", "-o", "json").stdout)["versions"]]


class Load:
    """The three load clients (load.py), each in its host's namespace."""

    def __init__(self, fleet: Fleet, stop: Path) -> None:
        self.stop_file = stop
        self.clients: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
        for host, target_service in (("host1", "web"), ("host2", "api"), ("host3", "api")):
            h = next(x for x in fleet.hosts if x.name == host)
            out = h.dir / f"load-{target_service}.json"
            p = h.spawn([sys.executable, str(LOAD), "127.0.0.1:4140", target_service, str(RATE), str(out), str(stop)],
                        h.dir / "load.log")
            self.clients.append((f"{host}->{target_service}", out, p))

    def finish(self) -> dict[str, dict[str, Any]]:
        self.stop_file.write_text("stop")
        results = {}
        for name, out, p in self.clients:
            p.wait(60)
            results[name] = json.loads(out.read_text())
        return results


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def _answers(host: Host, service: str) -> bool:
    r = host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                  "-H", f"Host: {service}", "http://127.0.0.1:4140/warm"], timeout=10)
    return r.stdout.strip() == "200"


@pytest.fixture
def reaper() -> Iterator[None]:
    """This test reaps proxies whose parent (the process a seamless restart replaced) exited, as PID 1 would."""
    with subreaper():
        yield


def test_fleet_joins_upgrades_restarts_and_restores_without_dropping_a_request(releases: dict[str, Path],
                                                                               reaper: None) -> None:
    root = Path(tempfile.mkdtemp(prefix="gm-fleet-"))
    fleet = Fleet(5, root)
    try:
        ops = Ops(fleet, releases)
        hosts = {h.name: h for h in fleet.hosts}
        assert not root_namespace_untouched()

        # The control plane on host1, from the older release, then the config.
        ops.runs["host1"] = "old"
        ops.start_control("old")
        (root / "mesh.yaml").write_text(MESH)
        ops.cli("apply", "-f", "-", stdin=MESH)

        # The apps, then every host joins with a token and starts its proxy as its unit says.
        for name, svc in SERVES.items():
            if svc in APP_PORTS:
                h = hosts[name]
                h.spawn([sys.executable, str(APPS), "http", "--listen", f"127.0.0.1:{APP_PORTS[svc]}",
                         "--name", f"{svc}@{name}"], h.dir / "app.log")
        for h in fleet.hosts:
            ops.join(h, "old")
            ops.proxies[h.name] = ops.start(h, "glassmesh-proxy.service", "old")
            ops.runs[h.name] = "old"
        # Both web instances answer host1's probe, and both api instances each web host.
        _wait(lambda: _answers(hosts["host1"], "web") and _answers(hosts["host2"], "api")
              and _answers(hosts["host3"], "api"), 60, "traffic across the namespaces")
        # A second version, so that "no version lost" is about a history, not a single entry.
        ops.cli("apply", "-f", "-", "--wait", stdin=MESH.replace("    calls: []\n", "    calls: []\n    max_endpoint_drop: 0.6\n"))
        versions = ops.history()
        assert versions == [2, 1], versions

        load = Load(fleet, root / "stop-load")
        ops.note("load started")
        time.sleep(3)
        # Upgrades in turn: each host's daemons from the new release's venv and units. The older release cannot
        # hand its sockets over: the new proxy starts on the same ports, then the old one is SIGTERMed.
        for h in fleet.hosts:
            ops.replace_proxy(h, "new")
            time.sleep(1)
        assert ops.control is not None
        ops.note("control plane: SIGTERM")
        ops.control.stop()
        ops.runs["host1"] = "new"
        ops.start_control("new")
        assert ops.history() == versions
        time.sleep(2)
        # Restarts in turn, as `systemctl reload glassmesh-proxy` does them (one unit, one main process at a
        # time), control plane last.
        for h in fleet.hosts:
            ops.reload_proxy(h)
            time.sleep(1)
        ops.note("control plane: SIGTERM")
        ops.control.stop()
        ops.start_control("new")
        assert ops.history() == versions
        time.sleep(2)
        # A backup taken while serving, restored into a fresh data directory: the same versions, the same CA
        # (the hosts' certificates still chain to it), and the proxies carry on.
        ops.note("control plane: backup, stop, restore")
        ops.backup_and_restore()
        assert ops.history() == versions
        time.sleep(3)
        results = load.finish()

        total = sum(r["requests"] for r in results.values())
        took = max(r["ended"] for r in results.values()) - min(r["started"] for r in results.values())
        failures = {k: r["failures"][:5] for k, r in results.items() if r["failures"]}
        assert not failures, (f"{sum(len(r['failures']) for r in results.values())} of {total} failed: {failures}\n"
                              + ops.timeline([(t, f"{k}: {st} {why}") for k, r in results.items()
                                              for t, st, why in r["failures"][:20]]))
        assert total / took >= 300, f"{total} requests in {took:.0f} s: under 300/s"
        for name, r in results.items():  # every instance served its callers
            assert len(r["by_app"]) == 2, (name, r["by_app"])
        # Every proxy runs the newest snapshot from the restored control plane, from the new release.
        def behind() -> list[dict[str, Any]]:
            return [h for h in json.loads(ops.cli("status", "-o", "json").stdout)["hosts"]
                    if not (h["in_sync"] and h["last_seen_s"] is not None and h["last_seen_s"] < 5)]

        try:
            _wait(lambda: not behind(), 30, "in sync")
        except AssertionError:
            late = behind()
            raise AssertionError(f"not in sync within 30 s: {late}\n" + "\n".join(
                f"--- {h['name']}'s proxy:\n{ops.proxies[h['name']].tail()}" for h in late)) from None
        proxies = json.loads(ops.cli("version", "-o", "json").stdout)["proxies"]
        assert {p["host"]: p["build"] for p in proxies} == dict.fromkeys(SERVES, "mypyc"), proxies
        print(f"fleet: {total} requests in {took:.0f} s ({total / took:.0f}/s), 0 failed; "
              f"{sum(r['reused_conn_retries'] for r in results.values())} client resends on a kept-alive "
              f"connection the server closed; config versions {versions}")
        assert not root_namespace_untouched()
    finally:
        fleet.close()
        shutil.rmtree(root, ignore_errors=True)
