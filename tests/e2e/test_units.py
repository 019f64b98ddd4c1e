"""The systemd units: what `glassmesh install-units` writes, and the notify protocol they rely on.

systemd may not run as PID 1 on the test machine, so the units are checked
with `systemd-analyze verify` (Debian's systemd package) and their contract
with the processes is checked the way systemd speaks it: the real `glassmesh
proxy` and `glassmesh control` run with NOTIFY_SOCKET pointing at a unix
datagram socket this test listens on (a path, or an abstract '@' name). At the
moment READY=1 arrives every listener must accept (and the proxy serve its
snapshot); SIGHUP is framed by RELOADING=1 and READY=1; SIGTERM sends
STOPPING=1.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import PROXY_CMD, Host, Mesh, Proc, get, split
from tests.e2e.test_control_plane import free_port

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
GLASSMESH = Path(sys.executable).parent / "glassmesh"  # the console script of the venv the tests run in


class NotifySocket:
    """What systemd listens on for sd_notify: a unix datagram socket, at a path or an abstract name."""

    def __init__(self, where: str) -> None:
        self.where = where  # NOTIFY_SOCKET's value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + where[1:] if where.startswith("@") else where)

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        """The next message's fields; TimeoutError when none comes."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            raise TimeoutError(f"no notify message within {timeout} s") from None
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def nothing_for(self, seconds: float) -> dict[str, str] | None:
        try:
            return self.next(seconds)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()
        if not self.where.startswith("@"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.where)


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    where = str(tmp_path / "notify.sock") if request.param == "path" else f"@glassmesh-test-{uuid.uuid4().hex}"
    n = NotifySocket(where)
    try:
        yield n
    finally:
        n.close()


def _accepts(addr: str) -> bool:
    try:
        socket.create_connection(split(addr), timeout=2).close()
        return True
    except OSError:
        return False


def _start_proxy(mesh: Mesh, host: Host, notify: NotifySocket, workers: int = 1) -> Proc:
    path = host.write_snapshot()
    args = [*PROXY_CMD, "--config", str(path)] + (["--workers", str(workers)] if workers > 1 else [])
    host.proxy = mesh.spawn(f"proxy {host.name}", args, env={"NOTIFY_SOCKET": notify.where})
    return host.proxy


@pytest.mark.parametrize("workers", [1, 2])
def test_proxy_says_ready_once_its_listeners_accept_and_frames_reload_and_stop(
        mesh: Mesh, notify: NotifySocket, workers: int) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    out = h1.client("a")
    h2.http_app("b")
    mesh.start_proxy(h2)
    proc = _start_proxy(mesh, h1, notify, workers)

    msg = notify.next()
    # This very moment: every listener accepts, the snapshot is in force, and a request goes through.
    listening = {a: _accepts(a) for a in (out, h1.inbound, h1.admin)}
    ready = get(h1.admin, "/ready")
    assert msg.get("READY") == "1", msg
    assert all(listening.values()), listening
    assert ready.status == 200 and ready.json()["snapshot_version"] == 1, ready
    assert get(out, "/hello", headers={"Host": "b"}).status == 200
    assert notify.nothing_for(0.5) is None  # said once

    h1.version = 2
    h1.write_snapshot()
    os.kill(proc.pid, signal.SIGHUP)
    reloading = notify.next()
    assert reloading.get("RELOADING") == "1" and int(reloading["MONOTONIC_USEC"]) > 0, reloading
    assert notify.next().get("READY") == "1"
    assert get(h1.admin, "/ready").json()["snapshot_version"] == 2

    assert proc.stop() == 0
    assert notify.next(5).get("STOPPING") == "1"
    assert notify.nothing_for(0.3) is None  # nothing from the workers: only the main process speaks


def test_proxy_outside_systemd_sends_nothing_and_runs(mesh: Mesh, tmp_path: Path) -> None:
    """A NOTIFY_SOCKET nobody listens on: one line saying so, and the proxy serves as ever."""
    h1 = mesh.add_host("host1")
    h1.client("a")
    path = h1.write_snapshot()
    h1.proxy = mesh.spawn("proxy host1", [*PROXY_CMD, "--config", str(path)],
                          env={"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    mesh.wait_ready(h1)
    assert "cannot notify systemd at NOTIFY_SOCKET=" in h1.proxy.log_text()


def test_control_plane_says_ready_once_it_listens_and_stopping_on_sigterm(
        mesh: Mesh, notify: NotifySocket) -> None:
    port, pport = free_port(), free_port()
    proc = mesh.spawn("control", [*CLI, "control", "--data", str(mesh.root / "control"),
                                  "--listen", f"127.0.0.1:{port}", "--proxy-listen", f"127.0.0.1:{pport}"],
                      env={"NOTIFY_SOCKET": notify.where})
    msg = notify.next(30)
    listening = {a: _accepts(a) for a in (f"127.0.0.1:{port}", f"127.0.0.1:{pport}")}
    assert msg.get("READY") == "1", msg
    assert all(listening.values()), listening
    assert proc.stop() == 0
    assert notify.next(5).get("STOPPING") == "1"


# --------------------------------------------------------------------------- the unit files


def _install(prefix: Path, *extra: str, exe: Path = GLASSMESH) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(exe), "install-units", "--prefix", str(prefix), *extra], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


def _unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#",), delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(path)
    return cp


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify`: a unit is fine when it exits 0 and says nothing (unknown keys only warn)."""
    return subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze (Debian's systemd) is missing")
def test_install_units_writes_units_that_systemd_analyze_verifies(tmp_path: Path) -> None:
    r = _install(tmp_path)
    units = tmp_path / "etc" / "systemd" / "system"
    proxy, control = units / "glassmesh-proxy.service", units / "glassmesh-control.service"
    assert f"wrote {proxy}" in r.stdout and f"wrote {control}" in r.stdout
    # ExecStart runs this venv's glassmesh (a path that exists, as verify requires), with the config file.
    p, c = _unit(proxy)["Service"], _unit(control)["Service"]
    assert p["ExecStart"] == f"{GLASSMESH} proxy --config-file /etc/glassmesh/proxy.yaml"
    assert c["ExecStart"] == f"{GLASSMESH} control --config-file /etc/glassmesh/control.yaml"
    done = verify(proxy, control)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done

    for s in (p, c):
        assert s["Type"] == "notify"
        assert s["User"] == "glassmesh" and "DynamicUser" not in s
        assert s["StateDirectory"] == "glassmesh" and s["StateDirectoryMode"] == "0700"
        assert s["ConfigurationDirectory"] == "glassmesh"
        for key, want in [("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("NoNewPrivileges", "yes"),
                          ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""), ("StandardOutput", "journal"),
                          ("StandardError", "journal")]:
            assert s[key] == want, (key, s.get(key))
        assert "AmbientCapabilities" not in s  # only as a comment, for ports below 1024
    assert p["ExecReload"] == f"{GLASSMESH} restart-proxy --pid $MAINPID"  # the seamless restart
    assert "ExecReload" not in c  # the control plane has no reload: SIGHUP would stop it
    sysusers = (tmp_path / "etc" / "sysusers.d" / "glassmesh.conf").read_text()
    assert "u glassmesh - " in sysusers


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze (Debian's systemd) is missing")
def test_a_broken_unit_fails_verify(tmp_path: Path) -> None:
    """The check above can fail: a unit whose ExecStart does not exist is refused."""
    _install(tmp_path, "--exec", str(tmp_path / "no-such-glassmesh"))
    done = verify(tmp_path / "etc" / "systemd" / "system" / "glassmesh-proxy.service")
    assert done.returncode != 0 and "no-such-glassmesh" in done.stdout + done.stderr, done


def test_install_units_that_cannot_write_says_where_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "etc").write_text("a file where the units' directory would go\n")
    r = subprocess.run([str(GLASSMESH), "install-units", "--prefix", str(tmp_path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"cannot write {tmp_path}/etc/systemd/system/glassmesh-control.service: " in r.stderr, r.stderr
