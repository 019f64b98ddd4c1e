"""A local service can call through a unix socket whose permissions say who may call as it."""

from __future__ import annotations

import os
import signal
import socket
import stat
import time
from collections.abc import Callable

from tests.e2e.harness import Host, Mesh, get, metric
from tests.e2e.test_listeners import refused


def test_calls_through_the_service_socket_carry_its_identity(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    path = str(mesh.root / "a.sock")
    h1._local("a").socket = path
    b = h2.http_app("b")
    mesh.start()
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    data = call_via(path)
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]
    assert b"spiffe://glassmesh.local/service/a" in data  # the echo app shows glassmesh-source
    assert b.requests() == 1
    assert metric(h1.metrics(), "glassmesh_requests_total", side="outbound", source="a", destination="b",
                  status_class="2xx") == 1
    mesh.stop()
    assert not os.path.exists(path), "the proxy removes its socket when it stops"



def call_via(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET http://b/via-socket HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def reload_to(h: Host, version: int, done: Callable[[], bool]) -> None:
    """Write the host's snapshot as `version`, SIGHUP its proxy, wait until every worker runs it and `done`."""
    assert h.proxy is not None
    h.version = version
    h.write_snapshot()
    os.kill(h.proxy.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        r = get(h.admin, "/ready")
        if all(w.get("snapshot_version") == version for w in r.json()["workers"]) and done():
            return
        assert time.monotonic() < deadline, h.proxy.log_text()
        time.sleep(0.05)


def test_a_socket_added_and_removed_by_sighup_with_workers(mesh: Mesh) -> None:
    """--workers 2, file-started: the supervisor binds the unix socket a reload adds and hands it to every worker."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    tcp = h1.client("a")
    h2.http_app("b")
    mesh.start(workers=2)
    path = str(mesh.root / "a.sock")
    h1.locals["a"].socket, h1.locals["a"].outbound = path, None  # a's listener: from a port to a socket
    reload_to(h1, 2, lambda: os.path.exists(path))
    for _ in range(20):  # each call a connection of its own: both workers accept on the socket
        data = call_via(path)
        assert data.startswith(b"HTTP/1.1 200 ") and b"spiffe://glassmesh.local/service/a" in data, data[:300]
    assert refused(tcp)  # the port it had is closed
    assert h1.proxy is not None and f"listeners added: a outbound {path}" in h1.proxy.log_text()

    h1.locals["a"].socket, h1.locals["a"].outbound = None, tcp  # and back
    reload_to(h1, 3, lambda: not os.path.exists(path))
    assert get(tcp, "/x", headers={"Host": "b"}).status == 200
