"""Listeners that follow the snapshot in a file-started proxy with workers: reloads in a row, a worker that dies.

The supervisor binds every listener and hands each worker its sockets (listeners.py); these check that a
worker started in place of a dead one serves what was added after the start, and that several reloads in
a row end with every worker on the last one.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time

from tests.e2e.harness import Host, Mesh, get, split


def ready_workers(h: Host) -> list[dict]:
    r = get(h.admin, "/ready")
    return list(r.json()["workers"])


def wait_workers(h: Host, version: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            ws = ready_workers(h)
            if ws and all(w.get("snapshot_version") == version and w.get("ready") for w in ws):
                return
        except (OSError, ValueError):
            pass
        assert h.proxy is not None
        assert time.monotonic() < deadline, h.proxy.log_text()
        time.sleep(0.05)


def hup(h: Host, version: int) -> None:
    assert h.proxy is not None
    h.version = version
    h.write_snapshot()
    os.kill(h.proxy.pid, signal.SIGHUP)


def refused(addr: str) -> bool:
    with socket.socket() as s:
        return s.connect_ex(split(addr)) == errno.ECONNREFUSED


def test_reloads_in_a_row_and_a_restarted_worker(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start(workers=2)
    assert h1.proxy is not None
    c_out = h1.client("c")  # a second local service: a new outbound port
    # Three reloads without waiting: add c, drop it, add it back. Every worker ends on the last one.
    hup(h1, 2)
    del h1.locals["c"]
    hup(h1, 3)
    h1.locals["c"] = h1._local("c")
    h1.locals["c"].outbound = c_out
    hup(h1, 4)
    wait_workers(h1, 4)
    for w in ready_workers(h1):
        assert f"c outbound {c_out}" in w["listeners"], w
    for i in range(40):  # each a new connection: the kernel spreads them over both workers' sockets
        assert get(c_out, f"/{i}", headers={"Host": "b"}).status == 200

    # A worker killed: the supervisor starts another in its place, with the sockets it holds (c's included).
    workers = [p for p in h1.proxy.pids() if p != h1.proxy.pid]
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while True:
        now = [p for p in h1.proxy.pids() if p != h1.proxy.pid]
        if len(now) == 2 and workers[0] not in now:
            break
        assert time.monotonic() < deadline, h1.proxy.log_text()
        time.sleep(0.05)
    wait_workers(h1, 4)
    for i in range(40):
        assert get(c_out, f"/again/{i}", headers={"Host": "b"}).status == 200

    # Removed after the restart: closed in every worker, the new one included.
    del h1.locals["c"]
    hup(h1, 5)
    wait_workers(h1, 5)
    deadline = time.monotonic() + 5
    while not refused(c_out):
        assert time.monotonic() < deadline, h1.proxy.log_text()
        time.sleep(0.05)
    assert get(h1.outbound("a"), "/x", headers={"Host": "b"}).status == 200
