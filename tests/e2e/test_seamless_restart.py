"""`systemctl reload glassmesh-proxy` restarts the proxy with nothing refused and nothing failed.

The unit's ExecReload (`glassmesh restart-proxy --pid $MAINPID`, as
`glassmesh install-units` writes it) is run here as systemd would run it,
against a real proxy whose NOTIFY_SOCKET this test listens on:

- Under steady load on its outbound port and its outbound unix socket (a
  fresh connection per request, so that a refused connect would show, plus
  kept-alive clients), the proxy is restarted three times (alone and with
  `--workers 2`): not one connect is refused, not one request fails; each
  time the pid changes, systemd hears `MAINPID=<new>` and `READY=1`, and the
  old process drains and exits 0.
- A successor that cannot start (a broken snapshot file) leaves the old
  process serving, untouched: the command exits 1 with the reason, systemd
  hears READY=1 and no new MAINPID, and a restart once the file is fixed works.
- A proxy that does not handle the restart signal is not sent it.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import PROXY_CMD, Host, Mesh, Proc, dead_address, get
from tests.e2e.test_stop import _pid_alive as _running
from tests.e2e.test_units import GLASSMESH, NotifySocket, _install, _unit
from tests.fleet.load import keep_alive

LOAD_S = 14.0  # at most; the load stops once the restarts are done
PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Make this process the subreaper of its descendants, as systemd (PID 1) is of a service's.

    A successor is the old proxy's child; once the old one exits it is
    reparented to the nearest subreaper, which this process becomes, so that
    it can be waited for (`wait_pid`).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


@pytest.fixture
def successors() -> Iterator[list[int]]:
    """Pids of proxies started by a restart: this test reaps them and, at the end, stops them (exit 0)."""
    pids: list[int] = []
    with subreaper():
        try:
            yield pids
        finally:
            problems = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                status = wait_pid(pid, 20)
                if status is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    wait_pid(pid, 5)
                    problems.append(f"pid {pid} still running 20 s after SIGTERM")
                elif status not in (0, -1):
                    problems.append(f"pid {pid} exited with status {status}")
            assert not problems, problems


def wait_pid(pid: int, timeout: float) -> int | None:
    """Its exit status once it exits (-1: not this process's to wait for), None if still running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if not _running(pid):
                return -1
        else:
            if done:
                return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return None


def exec_reload(tmp_path: Path) -> list[str]:
    """The proxy unit's ExecReload as `glassmesh install-units` writes it ($MAINPID left to fill in)."""
    _install(tmp_path)
    unit = _unit(tmp_path / "etc" / "systemd" / "system" / "glassmesh-proxy.service")
    argv = shlex.split(unit["Service"]["ExecReload"])
    assert argv[0] == str(GLASSMESH), argv
    return argv


def reload(argv: list[str], pid: int) -> subprocess.CompletedProcess[str]:
    cmd = [a.replace("$MAINPID", str(pid)) for a in argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


class Load:
    """Requests through the proxy until stopped: each one on a fresh connection (a refused connect is a
    failure), and on kept-alive connections that honour `connection: close` (a GET on a kept-alive
    connection the server closed before answering is sent once more, as RFC 9112 9.3.1 allows: counted)."""

    def __init__(self, tcp: str, unix: str) -> None:
        self.tcp, self.unix = tcp, unix
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.kept: dict[str, Any] = {"requests": 0, "failures": [], "reused_conn_retries": 0, "by_app": {}}
        self.threads = [threading.Thread(target=self._fresh, args=(k,), daemon=True) for k in ("tcp", "unix") * 2]
        self.threads += [threading.Thread(target=self._kept, args=(k,), daemon=True) for k in ("tcp", "unix")]
        self.deadline = time.monotonic() + LOAD_S
        for t in self.threads:
            t.start()

    def _conn(self, kind: str) -> http.client.HTTPConnection:
        if kind == "unix":
            return UnixHTTP(self.unix)
        host, _, port = self.tcp.rpartition(":")
        return http.client.HTTPConnection(host, int(port), timeout=10)

    def _done(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.deadline

    def _record(self, ok: bool, what: str = "") -> None:
        with self.lock:
            if ok:
                self.ok += 1
            else:
                self.failures.append(what)

    def _fresh(self, kind: str) -> None:
        while not self._done():
            c = self._conn(kind)
            try:
                c.request("GET", "/fresh", headers={"Host": "b"})
                r = c.getresponse()
                r.read()
                self._record(r.status == 200, f"{kind}: {r.status} {r.getheader('glassmesh-error')}")
            except (OSError, http.client.HTTPException) as e:
                self._record(False, f"{kind} fresh: {e!r}")
            finally:
                c.close()
            time.sleep(0.005)

    def _kept(self, kind: str) -> None:
        keep_alive(lambda: self._conn(kind), "b", 0.005, self._done, self.kept, self.lock)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _notify_fields(n: NotifySocket, want: str, timeout: float = 30) -> list[dict[str, str]]:
    """Messages up to and including the first that carries `want`."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        msg = n.next(max(0.1, deadline - time.monotonic()))
        got.append(msg)
        if want in msg:
            return got


def _mesh(mesh: Mesh, tmp_path: Path) -> tuple[Host, Host, str]:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    sock = str(tmp_path / "a.sock")
    h1._local("a").socket = sock
    h2.http_app("b")
    mesh.start_proxy(h2)
    return h1, h2, sock


def _start(mesh: Mesh, h1: Host, notify: NotifySocket, workers: int) -> Proc:
    path = h1.write_snapshot()
    args = [*PROXY_CMD, "--config", str(path)] + (["--workers", str(workers)] if workers > 1 else [])
    h1.proxy = mesh.spawn("proxy host1", args, env={"NOTIFY_SOCKET": notify.where})
    assert notify.next(30).get("READY") == "1"
    return h1.proxy


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_restarts_the_proxy_three_times_under_load_refusing_nothing(
        mesh: Mesh, tmp_path: Path, workers: int, successors: list[int]) -> None:
    h1, _, sock = _mesh(mesh, tmp_path)
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    argv = exec_reload(tmp_path / "units")
    try:
        first = _start(mesh, h1, notify, workers)
        load = Load(h1.outbound("a"), sock)
        main, olds = first.pid, []
        try:
            time.sleep(1.0)
            for _ in range(3):
                r = reload(argv, main)
                assert r.returncode == 0, (r.stdout, r.stderr, first.log_text())
                msgs = _notify_fields(notify, "MAINPID")
                assert msgs[0].get("RELOADING") == "1", msgs
                new = int(msgs[-1]["MAINPID"])
                assert msgs[-1].get("READY") == "1" and new != main, msgs
                assert f"pid {new} serves every listener" in r.stdout, r.stdout
                successors.append(new)
                olds.append(main)
                main = new
                time.sleep(1.5)
        finally:
            load.finish()
        # The first old process is this test's child: it drained and exited 0. The others, its successors.
        assert first.popen.wait(15) == 0, first.log_text()
        for pid in olds[1:]:
            assert wait_pid(pid, 15) == 0, f"pid {pid} did not drain and exit 0:\n{first.log_text()}"
        failures = load.failures + load.kept["failures"]
        assert not failures, f"{len(failures)} failed of {load.ok + load.kept['requests']}: {failures[:10]}\n" \
                             f"{first.log_text()}"
        assert load.ok > 300 and load.kept["requests"] > 100, (load.ok, load.kept["requests"])
        assert _running(main)
        doc = get(h1.admin, "/ready").json()
        assert doc["ready"] is True, doc
        assert os.path.exists(sock), "the unix socket file is still there, served by the last proxy"
        text = first.log_text(400)
        assert text.count("drained in") >= 3, text
        assert "took over" in text and f"pid {main} serves every listener" in text, text
        # The last successor is systemd's main process now: it says STOPPING=1 as it drains on SIGTERM.
        os.kill(main, signal.SIGTERM)
        assert notify.next(10).get("STOPPING") == "1"
        assert wait_pid(main, 15) == 0, first.log_text()
        print(f"seamless restarts: {load.ok} requests on fresh connections and {load.kept['requests']} on kept-alive "
              f"ones, 0 failed; {load.kept['reused_conn_retries']} resent on a kept-alive connection the draining "
              "proxy closed")
    finally:
        notify.close()


def test_a_successor_that_cannot_start_leaves_the_old_proxy_serving(
        mesh: Mesh, tmp_path: Path, successors: list[int]) -> None:
    h1, _, sock = _mesh(mesh, tmp_path)
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    argv = exec_reload(tmp_path / "units")
    try:
        proc = _start(mesh, h1, notify, 1)
        snapshot = h1.snapshot_path
        assert snapshot is not None
        good = snapshot.read_text()
        snapshot.write_text("{ not a snapshot")
        r = reload(argv, proc.pid)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"the proxy (pid {proc.pid}) was not restarted and serves on" in r.stderr, r.stderr
        assert "exited with status 1 before it was ready" in r.stderr, r.stderr
        msgs = _notify_fields(notify, "READY")
        assert msgs[0].get("RELOADING") == "1" and "MAINPID" not in msgs[-1], msgs
        assert "restart failed" in msgs[-1].get("STATUS", ""), msgs
        # The old one serves on, every listener untouched.
        assert proc.alive()
        assert get(h1.outbound("a"), "/after", headers={"Host": "b"}).status == 200
        c = UnixHTTP(sock)
        c.request("GET", "/after", headers={"Host": "b"})
        assert c.getresponse().status == 200
        c.close()
        assert get(h1.admin, "/ready").json()["ready"] is True
        assert "seamless restart failed; this process" in proc.log_text(), proc.log_text()

        snapshot.write_text(good)  # fixed: now it restarts
        r = reload(argv, proc.pid)
        assert r.returncode == 0, (r.stdout, r.stderr, proc.log_text())
        new = int(_notify_fields(notify, "MAINPID")[-1]["MAINPID"])
        successors.append(new)
        assert proc.popen.wait(15) == 0
        assert get(h1.outbound("a"), "/fixed", headers={"Host": "b"}).status == 200
    finally:
        notify.close()


def test_restart_proxy_does_not_signal_a_process_that_would_die_of_it(tmp_path: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        r = reload(exec_reload(tmp_path), victim.pid)
        assert r.returncode == 1 and "does not handle SIGUSR2" in r.stderr, r.stderr
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_a_successor_not_ready_in_time_is_stopped_and_the_old_proxy_serves_on(
        mesh: Mesh, tmp_path: Path, successors: list[int]) -> None:
    """Under a control plane that is down, with no snapshot left on disk, a successor can only wait: it is
    stopped at the handover timeout (3 s here, GLASSMESH_HANDOVER_TIMEOUT_S) and the old proxy serves on."""
    h1, _, sock = _mesh(mesh, tmp_path)
    seed = h1.write_snapshot()
    data = tmp_path / "data"
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        proc = mesh.spawn("proxy host1", [*PROXY_CMD, "--control", f"http://{dead_address()}", "--host", "host1",
                                          "--data", str(data), "--config", str(seed)],
                          env={"NOTIFY_SOCKET": notify.where, "GLASSMESH_HANDOVER_TIMEOUT_S": "3"})
        h1.proxy = proc
        assert notify.next(30).get("READY") == "1", proc.log_text()
        seed.unlink()
        (data / "snapshot.json").unlink(missing_ok=True)
        r = reload(exec_reload(tmp_path / "units"), proc.pid)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "was not ready within 3 s: stopped it" in r.stderr, (r.stderr, proc.log_text())
        msgs = _notify_fields(notify, "READY")
        assert "MAINPID" not in msgs[-1] and "restart failed" in msgs[-1].get("STATUS", ""), msgs
        assert proc.alive()
        assert get(h1.outbound("a"), "/after", headers={"Host": "b"}).status == 200
        assert os.path.exists(sock)
        assert get(h1.admin, "/ready").status == 200
    finally:
        notify.close()
