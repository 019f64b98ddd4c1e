"""Stopping: a proxy exits 0 soon after SIGTERM in every state, and within a deadline even when it cannot.

- SIGTERM while a proxy joins a control plane that has not answered yet:
  it says so and exits 0 (it was killed by the signal before).
- SIGTERM while a controlled proxy waits for its first snapshot from a
  control plane that has just stopped (connection refused), at moments
  spread over its retry backoff: it says so and exits 0.
- The demo's case: the control plane and the proxies are SIGTERMed together
  (the proxies' long-polls end with the control plane), over and again with
  the proxy's signal a little earlier or later: every proxy exits 0.
- A proxy whose event loop is stuck (its access log is a pipe nobody reads)
  still exits once the stop deadline (its --drain-timeout, then
  GLASSMESH_STOP_DEADLINE_S to close) has passed, with status 1 and a log
  line naming where it was stuck.
- A `--workers 2` proxy with a worker restarted after a crash: SIGTERM to the
  supervisor ends it and every worker, status 0.
- A control plane whose etcd froze (SIGSTOP) still exits 0 within seconds:
  its goodbye to the store is bounded.
- `glassmesh demo` SIGKILLed a few seconds in: every child exits within
  seconds (they get SIGTERM when it dies) and its ports are free again;
  Ctrl-C: it stops every process, none logs a traceback.

Teardown (harness.Proc) also fails any test here whose processes do not exit
0 within a few seconds of SIGTERM or log a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import PROXY_CMD, Mesh, _children, dead_address, get
from tests.e2e.test_control_watch import Topo, wait_for
from tests.e2e.test_demo import _bindable

F_SETPIPE_SZ = 1031  # linux/fcntl.h
CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]


def test_sigterm_while_waiting_for_the_first_snapshot_exits_0(mesh: Mesh) -> None:
    gone = f"http://{dead_address()}"  # nothing listens there: a control plane that has just stopped
    for i, after in enumerate((0.3, 0.9, 1.6, 2.7)):  # backoff 0.2 s doubling: before, in and after retries
        data = mesh.root / f"h{i}"
        p = mesh.spawn(f"proxy waiting {i}", [*PROXY_CMD, "--control", gone, "--host", "host2", "--data", str(data)])
        wait_for(lambda p=p: "waiting for the first snapshot" in p.log_text(), 15, "the proxy says it waits")
        time.sleep(after)
        t0 = time.monotonic()
        code = p.stop()
        took = time.monotonic() - t0
        assert code == 0 and took < 3.0, f"SIGTERM {after} s in: status {code} after {took:.1f} s\n{p.log_text()}"
        assert "stopped while waiting for the first snapshot" in p.log_text()


def test_sigterm_while_joining_exits_0(mesh: Mesh) -> None:
    # A control plane that takes its time: the TCP connection is made (the listen backlog), nothing answers.
    with socket.socket() as slow:
        slow.bind(("127.0.0.1", 0))
        slow.listen(8)
        slow.settimeout(15)
        url = f"https://127.0.0.1:{slow.getsockname()[1]}"
        p = mesh.spawn("proxy joining", [*PROXY_CMD, "--control", url, "--join", "t" * 40, "--ca-sha256", "ab" * 32,
                                         "--data", str(mesh.root / "hj")])
        conn, _ = slow.accept()  # the proxy is in its join: fetching the CA to check against the pin
        with conn:
            t0 = time.monotonic()
            code = p.stop()
            took = time.monotonic() - t0
    assert code == 0 and took < 3.0, f"status {code} after {took:.1f} s\n{p.log_text()}"
    assert "stopped while joining the control plane" in p.log_text()
    assert not (mesh.root / "hj" / "identity" / "identity.json").exists()


def test_control_plane_and_proxies_sigtermed_together_all_exit_0(mesh: Mesh) -> None:
    topo = Topo(mesh)
    topo.up()
    for round_ in range(3):  # the hang needed a stop and the long-poll's end in the same moment: try a few
        if round_:
            topo.cp.start()
            for h in topo.hosts():
                h.start(topo.cp.url)  # from their last-known-good snapshots on disk, watching again
            for h in topo.hosts():
                h.wait_ready()
        procs = [*(h.proxy for h in topo.hosts()), topo.cp.proc]
        # As the demo's runner stops everything: one SIGTERM each, the control plane's among them.
        for p in procs:
            os.kill(p.pid, signal.SIGTERM)  # type: ignore[union-attr]
        t0 = time.monotonic()
        for p in procs:
            assert p is not None
            try:
                code = p.popen.wait(max(0.1, t0 + 5.0 - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, (f"round {round_}: {p.name}: status {code} {time.monotonic() - t0:.1f} s after "
                               f"SIGTERM\n{p.log_text()}")


def test_a_proxy_stuck_in_a_write_exits_at_the_stop_deadline(mesh: Mesh) -> None:
    h1 = mesh.add_host("host1")
    h2 = mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start()
    pipe = mesh.root / "access.pipe"
    os.mkfifo(pipe, 0o600)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # open, never read: the pipe fills up
    try:
        fcntl.fcntl(reader, F_SETPIPE_SZ, 4096)
        h1.proxy_args = ["--access-log", str(pipe)]
        path = h1.write_snapshot()
        assert h1.proxy is not None
        h1.proxy.stop()
        h1.proxy = p = mesh.spawn("proxy host1 stuck", [*PROXY_CMD, "--config", str(path), "--access-log", str(pipe),
                                                        "--drain-timeout", "1"],
                                  env={"GLASSMESH_STOP_DEADLINE_S": "2"})
        p.expect_exit()  # it is meant to be forced out, with status 1
        mesh.wait_ready(h1)
        for _ in range(200):  # each request adds a line; once 4 KiB wait in the pipe the write blocks
            try:
                get(h1.outbound("a"), "/", headers={"Host": "b"}, timeout=0.5)
            except OSError:
                break  # the proxy no longer answers: its loop is stuck in the write
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGTERM)
        p.popen.wait(10)
        took = time.monotonic() - t0
        log = p.log_text()
        assert p.popen.returncode == 1, log
        assert 2.5 < took < 6.0, f"exited {took:.1f} s after SIGTERM\n{log}"
        line = next((x for x in log.splitlines() if "still stopping" in x), "")
        assert "still stopping 3 s after SIGTERM" in line and "exiting now (status 1)" in line, log
        assert "event loop, which does not answer" in line and "glassmesh/proxy/runtime.py" in line, line
    finally:
        os.close(reader)


# --------------------------------------------------------------------------- the demo


DEMO_PORTS = [("127.0.0.1", 4200), ("127.0.0.11", 4143), ("127.0.0.12", 4143), ("127.0.0.13", 4143),
              ("127.0.0.11", 4191), ("127.0.0.12", 4191), ("127.0.0.13", 4191)]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class _Demo:
    """`glassmesh demo` (until Ctrl-C) as a user runs it, its output in a file."""

    def __init__(self, root: Path) -> None:
        self.state, self.out = root / "state", root / "demo.out"
        self.seen: set[int] = set()
        with open(self.out, "wb") as out:
            self.popen = subprocess.Popen([*CLI, "demo", "--state-dir", str(self.state)], stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})

    def children(self) -> list[int]:
        """Its child processes now (remembered, so that the fixture ends any left behind, by PID)."""
        kids = _children(self.popen.pid)
        self.seen.update(kids)
        return kids

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted((self.state / "logs").glob("*.log"))}

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)


@pytest.fixture
def demo(tmp_path: Path, demo_addresses: None) -> Iterator[_Demo]:
    busy = [f"{ip}:{port}" for ip, port in DEMO_PORTS if not _bindable(ip, port)]
    if busy:
        pytest.fail(f"the demo's addresses are in use ({', '.join(busy)}): stop the demo (or test) holding them")
    d = _Demo(tmp_path)
    try:
        yield d
    finally:
        d.children()
        d.kill()
        for pid in d.seen:  # still ours: its command line names the demo's state dir or module
            with contextlib.suppress(OSError):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(d.state).encode() in cmd or b"glassmesh.demo" in cmd:
                    os.kill(pid, signal.SIGKILL)


def _all_gone(demo: _Demo, kids: list[int]) -> None:
    """Every child of a killed demo exits within seconds (by its own SIGTERM), freeing the ports, cleanly."""
    try:
        wait_for(lambda: not any(_pid_alive(p) for p in kids), 12, "every child of the killed demo exits")
    except AssertionError:
        raise AssertionError(f"still running: {[p for p in kids if _pid_alive(p)]}\n{demo.logs()}") from None
    assert all(_bindable(ip, port) for ip, port in DEMO_PORTS), "a port of the demo is still held"
    for name, text in demo.logs().items():
        assert "Traceback" not in text and "still stopping" not in text, f"{name}:\n{text}"


def test_demo_sigkilled_while_starting_takes_every_child_with_it(demo: _Demo) -> None:
    # The case: interrupted a few seconds in, the control plane up, the proxies just started.
    wait_for(lambda: re.search(r"starting \d+ proxies", demo.text()) is not None or demo.popen.poll() is not None, 60,
             "the demo starts its proxies")
    assert demo.popen.poll() is None, demo.text()
    time.sleep(1.0)
    kids = demo.children()
    assert len(kids) >= 7, demo.text()  # control plane, apps, proxies
    demo.kill()  # SIGKILL: no chance to stop anything itself
    _all_gone(demo, kids)


def test_demo_killed_while_stopping_every_process_leaves_none_behind(demo: _Demo) -> None:
    # The exact steps: Ctrl-C a few seconds in, then the runner killed while it stops its children.
    wait_for(lambda: re.search(r"starting \d+ proxies", demo.text()) is not None or demo.popen.poll() is not None, 60,
             "the demo starts its proxies")
    time.sleep(1.0)
    kids = demo.children()
    os.kill(demo.popen.pid, signal.SIGINT)
    wait_for(lambda: "stopping every process" in demo.text(), 10, "the demo stops its processes")
    demo.kill()
    _all_gone(demo, kids)


def test_demo_ctrl_c_stops_every_process_cleanly(demo: _Demo) -> None:
    try:
        wait_for(lambda: "all ready" in demo.text() or demo.popen.poll() is not None, 90, "the demo is ready")
    except AssertionError:
        raise AssertionError(f"the demo is not ready after 90 s:\n{demo.text()}") from None
    assert "all ready" in demo.text(), demo.text()
    kids = demo.children()
    time.sleep(2.0)  # some traffic
    os.kill(demo.popen.pid, signal.SIGINT)  # Ctrl-C
    demo.popen.wait(30)  # its status says whether the run was clean (B bounced...): not judged here
    assert not any(_pid_alive(p) for p in kids), demo.text()
    assert re.search(r"stopped \d+ processes", demo.text()), demo.text()
    for name, text in demo.logs().items():
        assert "Traceback" not in text and "still stopping" not in text, f"{name}:\n{text}"


# --------------------------------------------------------------------------- the control plane


def test_control_plane_whose_etcd_froze_still_stops_promptly(mesh: Mesh) -> None:
    """Its goodbye to the store (the replica record) is best effort: a frozen etcd does not hold the stop."""
    from tests.e2e.test_control_ha import Replica
    from tests.etcd_cluster import EtcdCluster

    with EtcdCluster.started(size=1) as etcd:
        r = Replica(mesh, "r1", etcd.url)
        r.start()
        assert r.proc is not None
        wait_for(lambda: "listening on" in r.proc.log_text(), 10, "the replica listens")  # type: ignore[union-attr]
        time.sleep(1.0)  # its heartbeat has written its replica record
        frozen = [m.pid for m in etcd.members if m.pid is not None]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)  # etcd hangs: connections open, nothing answers
        try:
            t0 = time.monotonic()
            os.kill(r.proc.pid, signal.SIGTERM)
            try:
                code = r.proc.popen.wait(20)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - t0
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert code == 0 and took < 6.0, f"status {code} {took:.1f} s after SIGTERM\n{r.proc.log_text()}"


def test_supervisor_with_a_restarted_worker_stops_all_with_status_0(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start(workers=2)
    sup = h1.proxy
    assert sup is not None
    first = _children(sup.pid)
    os.kill(first[0], signal.SIGKILL)  # a worker dies; the supervisor starts another
    wait_for(lambda: "restarting it" in sup.log_text() and len(_children(sup.pid)) == 2, 10, "a new worker")
    workers = _children(sup.pid)
    assert get(h1.outbound("a"), "/", headers={"Host": "b"}).status == 200
    t0 = time.monotonic()
    assert sup.stop() == 0, sup.log_text()
    assert time.monotonic() - t0 < 5.0 and not sup.problems, sup.problems
    assert not any(_pid_alive(p) for p in workers)


def test_control_plane_sigtermed_as_it_starts_exits_0(tmp_path: Path) -> None:
    """A SIGTERM as soon as the API port opens (the heartbeat's first announcement under way): status 0, at once.

    asyncio.wait_for in Python 3.11 swallows a cancel that arrives as its event is set; the stop then
    waited forever for the heartbeat it had cancelled (2 starts in 15), until the 10 s deadline.
    """
    from tests.e2e.test_control_plane import Control

    for i in range(20):
        (tmp_path / f"r{i}").mkdir()
        c = Control(tmp_path / f"r{i}")
        t0 = time.monotonic()
        c.proc.terminate()
        try:
            code = c.proc.wait(8)
        except subprocess.TimeoutExpired:
            code = None
            c.proc.kill()
            c.proc.wait(5)
        c.log.close()
        took = time.monotonic() - t0
        assert code == 0 and took < 3, f"start {i}: status {code} after {took:.1f} s:\n" \
                                       f"{(tmp_path / f'r{i}' / 'control.log').read_text()[-2000:]}"
