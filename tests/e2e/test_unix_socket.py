"""A local service can call through a unix socket whose permissions say who may call as it."""

from __future__ import annotations

import os
import socket
import stat

from tests.e2e.harness import Mesh, metric


def test_calls_through_the_service_socket_carry_its_identity(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    path = str(mesh.root / "a.sock")
    h1._local("a").socket = path
    b = h2.http_app("b")
    mesh.start()
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(b"GET http://b/via-socket HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 "), data[:300]
    assert b"spiffe://glassmesh.local/service/a" in data  # the echo app shows glassmesh-source
    assert b.requests() == 1
    assert metric(h1.metrics(), "glassmesh_requests_total", side="outbound", source="a", destination="b",
                  status_class="2xx") == 1
    mesh.stop()
    assert not os.path.exists(path), "the proxy removes its socket when it stops"
