"""The control plane as a user runs it: a real `glassmesh control` process and real CLI commands.

Proves the config round trip (apply, diff, get, history, rollback, with a
validation error), that a watching proxy gets a new snapshot within 2 s of an
apply or an instance report, and that wiping out a service is held, shown in
`status`, and released by `glassmesh release`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import free_port
from tests.e2e.operator import api, cli_env

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: 8080
    health: {http: /healthz}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
  - {name: host2, address: 127.0.0.12:4143, services: [b]}
  - {name: host3, address: 127.0.0.13:4143, services: [b]}
"""


class Control:
    """`glassmesh control` with its operator API (TLS, the admin credential it writes) and, for the
    proxy routes these tests drive by hand, the insecure plain listener on loopback."""

    def __init__(self, root: Path, extra: list[str] | None = None) -> None:
        port, iport = free_port(), free_port()
        self.url = f"https://127.0.0.1:{port}"
        self.insecure = f"http://127.0.0.1:{iport}"
        self.cred = root / "data" / "admin.pem"
        self.log = open(root / "control.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([*CLI, "control", "--data", str(root / "data"), "--listen", f"127.0.0.1:{port}",
                                      "--insecure-proxy-listen", f"127.0.0.1:{iport}", *(extra or [])],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((root / "control.log").read_text()) from None
                time.sleep(0.05)

    def cli(self, *args: str, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env={**cli_env(self.url, self.cred), **(env or {})}, cwd=cwd,
                              capture_output=True, text=True, timeout=30)

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return api(self.url, method, path, body, self.cred)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A proxy route, as a proxy without a host identity sends it (the insecure listener)."""
        req = urllib.request.Request(self.insecure + path, json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def poll(self, host: str, after: int, wait: float) -> tuple[int, dict[str, Any] | None]:
        with urllib.request.urlopen(f"{self.insecure}/v1/hosts/{host}/snapshot?after={after}&wait={wait}",
                                    timeout=wait + 10) as r:
            return r.status, (json.loads(r.read()) if r.status == 200 else None)

    def stop(self) -> None:
        """SIGTERM; AssertionError unless it exits 0 within 5 s and its log holds no traceback."""
        problem = ""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                if self.proc.wait(5) != 0:
                    problem = f"exited with status {self.proc.returncode} after SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                problem = "still running 5 s after SIGTERM (SIGKILLed)"
        if not self.log.closed:
            self.log.close()
        text = Path(self.log.name).read_text(errors="replace")
        if not problem and "Traceback" in text:
            problem = "its log holds a traceback"
        assert not problem, f"control plane {problem}:\n{text[-4000:]}"


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    c = Control(tmp_path)
    try:
        yield c
    finally:
        c.stop()


def test_apply_diff_get_history_rollback(control: Control, tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    r = control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "+  name: b" in r.stdout and "applied: version 1" in r.stdout
    assert "no changes against version 1" in control.cli("diff", "-f", "mesh.yaml", cwd=tmp_path).stdout

    (tmp_path / "mesh.yaml").write_text(MESH.replace("port: 8080", "port: 8090"))
    r = control.cli("diff", "-f", "mesh.yaml", cwd=tmp_path)
    assert "-  port: 8080" in r.stdout and "+  port: 8090" in r.stdout
    assert "dry run" in control.cli("apply", "-f", "mesh.yaml", "--dry-run", cwd=tmp_path).stdout
    assert "applied: version 2" in control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path).stdout
    assert "port: 8090" in control.cli("get").stdout

    (tmp_path / "bad.yaml").write_text(MESH.replace("port: 8080", 'port: "8080"').replace("  - name: a\n",
                                                                                          "  - name: a\n    wieght: 1\n"))
    r = control.cli("apply", "-f", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 3
    assert r.stderr.splitlines() == ["bad.yaml:3: services[0].wieght: Object contains unknown field wieght",
                                     "bad.yaml:6: services[1].port: Expected int, got str",
                                     "bad.yaml: 2 problems, nothing applied"]
    assert "Traceback" not in r.stderr
    (tmp_path / "bad2.yaml").write_text(MESH.replace("port: 8080", 'port: "8080"'))
    r = control.cli("apply", "-f", "bad2.yaml", cwd=tmp_path)
    assert r.returncode == 3 and "bad2.yaml:5: services[1].port: Expected int, got str" in r.stderr

    r = control.cli("rollback", "1")
    assert r.returncode == 0 and "now version 3" in r.stdout and "+  port: 8080" in r.stdout
    hist = control.cli("history").stdout
    # The author is the operator credential's name (an `author` a client sends is not recorded:
    # tests/security/test_operator_api.py sends one).
    assert "admin (rollback to 1)" in hist and "rollback to version 1" in hist, hist
    assert "mallory" not in hist
    assert control.cli("rollback", "99").returncode == 4  # refused: no such version


def test_unreachable_control_plane_is_one_line_exit_5(control: Control) -> None:
    env = cli_env(f"https://127.0.0.1:{free_port()}", control.cred)  # a valid credential, nobody listening
    r = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 5
    assert r.stderr.strip().startswith("error: cannot reach the control plane") and len(r.stderr.splitlines()) == 1


class Watcher:
    """A simulated proxy: long-polls its snapshot and records when each version arrived."""

    def __init__(self, control: Control, host: str) -> None:
        self.control, self.host = control, host
        self.got: list[tuple[float, dict[str, Any]]] = []
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        after = 0
        while not self.stopped:
            status, snap = self.control.poll(self.host, after, 1)
            if snap is not None:
                self.got.append((time.monotonic(), snap))
                after = snap["version"]

    def wait_for(self, pred: Any, since: float, limit: float = 2.0) -> dict[str, Any]:
        while time.monotonic() < since + limit:
            for t, snap in self.got:
                if t >= since and pred(snap):
                    return snap
            time.sleep(0.01)
        raise AssertionError(f"no matching snapshot within {limit}s; got {[s['version'] for _, s in self.got]}")


def b_endpoints(snap: dict[str, Any]) -> list[str]:
    return [e["host"] for s in snap["services"] if s["name"] == "b" for e in s.get("endpoints", [])]


def report(control: Control, host: str, healthy: bool | None) -> None:
    inst = [] if healthy is None else [{"service": "b", "address": f"127.0.0.{host[-1] * 2}:8080",
                                        "healthy": healthy, "detail": "" if healthy else "connect refused"}]
    control.post(f"/v1/hosts/{host}/instances", {"instances": inst, "ttl_s": 30})


def test_watchers_get_changes_within_2s_and_wipe_out_is_held(control: Control, tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    assert control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path).returncode == 0
    t = time.monotonic()
    w = Watcher(control, "host1")
    try:
        w.wait_for(lambda s: s["host"] == "host1", t)
        t = time.monotonic()
        report(control, "host2", True)
        w.wait_for(lambda s: b_endpoints(s) == ["host2"], t)
        t = time.monotonic()
        report(control, "host3", True)
        w.wait_for(lambda s: b_endpoints(s) == ["host2", "host3"], t)
        # An apply reaches the watcher too (a's outbound listener is pinned to a new port).
        (tmp_path / "mesh.yaml").write_text(MESH.replace("services: [a]}", "services: [a], outbound: {a: 127.0.0.11:5140}}"))
        t = time.monotonic()
        assert control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path).returncode == 0
        w.wait_for(lambda s: s["local_services"][0]["outbound"] == "127.0.0.11:5140", t)

        # Every instance of b goes away: held, not pushed; status says why.
        n = len(w.got)
        report(control, "host2", None)
        report(control, "host3", False)
        time.sleep(1.0)
        assert b_endpoints(w.got[-1][1]) == ["host2", "host3"] and len(w.got) == n
        st = control.cli("status")
        assert "held changes" in st.stdout and "would remove every endpoint of 'b'" in st.stdout
        assert "connect refused" in st.stdout  # host3's sick instance is listed
        st_json = json.loads(control.cli("status", "--json").stdout)
        assert [h["service"] for h in st_json["held"]] == ["b"]
        metrics = control.api("GET", "/metrics")[1]
        assert 'glassmesh_control_held_changes{service="b"} 1.0' in metrics, metrics
        assert "glassmesh_control_held_services 1.0" in metrics
        # The old name (a gauge named like a counter) is kept one release, marked deprecated.
        assert "glassmesh_control_held_changes_total 1.0" in metrics and "DEPRECATED" in metrics
        assert "glassmesh_control_unhealthy_instances 1.0" in metrics

        t = time.monotonic()
        r = control.cli("release", "b")
        assert r.returncode == 0, r.stderr
        w.wait_for(lambda s: b_endpoints(s) == [], t)
        assert "held changes: none" in control.cli("status").stdout
        metrics = control.api("GET", "/metrics")[1]
        assert "glassmesh_control_held_services 0.0" in metrics
        assert 'glassmesh_control_host_snapshot_version{host="host1",kind="latest"}' in metrics
    finally:
        w.stopped = True
        w.thread.join(5)


def test_sigterm_exits_promptly_with_long_polls_open(control: Control, tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("services:\n  - {name: b, port: 18080}\nhosts:\n  - {name: h1, address: '127.0.9.1:4143', services: [b]}\n")
    assert control.cli("apply", "-f", str(mesh)).returncode == 0
    pollers = [threading.Thread(target=lambda: _ignore(lambda: control.poll("h1", 10**9, 120)), daemon=True)
               for _ in range(5)]
    for p in pollers:
        p.start()
    time.sleep(0.5)
    t = time.monotonic()
    control.proc.terminate()
    control.proc.wait(15)
    assert time.monotonic() - t < 5, "open long-polls must not hold up a shutdown"


def _ignore(fn: Any) -> None:
    try:
        fn()
    except OSError:
        pass


def test_status_keeps_a_row_per_host_and_shows_fixed_rejects_as_past(control: Control, tmp_path: Path) -> None:
    """host1 refuses v4 with a long reason, then runs v5: the reject is history, not a problem on its row."""
    (tmp_path / "mesh.yaml").write_text(MESH)
    assert control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path).returncode == 0
    reason = "listener addresses changed (a outbound 127.0.0.11:4140 -> 127.0.0.11:4150); " * 4 + "\nrestart it"
    control.post("/v1/hosts/host1/ack", {"version": 4, "accepted": False, "reason": reason})
    control.post("/v1/hosts/host2/ack", {"version": 6, "accepted": False, "reason": "bad"})

    def status_lines(want: str) -> list[str]:
        deadline = time.monotonic() + 10
        while True:  # acks are written in batches
            r = control.cli("status", env={"COLUMNS": "100"})
            assert r.returncode == 0, r.stderr
            if want in r.stdout or time.monotonic() > deadline:
                return r.stdout.splitlines()
            time.sleep(0.1)

    lines = status_lines("host2 refused v6")
    rows = [x for x in lines if x.startswith((" host1", " host2", " host3"))]
    assert len(rows) == 3 and all(len(x) <= 100 for x in lines if not x.startswith("  host")), lines
    assert "v4: listener addresses changed" in rows[0] and rows[0].rstrip().endswith("…"), rows
    assert "  host1 refused v4: " + " ".join(reason.split()) in lines  # the whole reason, in the list
    control.post("/v1/hosts/host1/ack", {"version": 5, "accepted": True, "reason": ""})
    lines = status_lines("it runs v5 now")
    rows = [x for x in lines if x.startswith((" host1", " host2", " host3"))]
    assert len(rows) == 3 and rows[0].rstrip().endswith("v4 rejected earlier"), lines
    assert rows[1].rstrip().endswith("v6: bad"), rows  # host2 still runs an older version: it stands
    assert any(x.startswith("  host1 refused v4: ") and x.endswith("(past: it runs v5 now)") for x in lines), lines
    assert "  host2 refused v6: bad" in lines
    doc = json.loads(control.cli("status", "--json").stdout)
    host1 = next(h for h in doc["hosts"] if h["name"] == "host1")
    assert host1["last_reject"]["past"] is True and host1["last_reject"]["reason"] == reason
