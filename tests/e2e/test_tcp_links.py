"""TCP links: a local port on host1 carries raw bytes over mTLS to service db on host2, unchanged, half-close kept."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
import time

from tests.e2e.harness import Mesh, metric, split


def setup(mesh: Mesh, mode: str = "echo", banner: str = "") -> tuple:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    listen = h1.tcp_link("a", "db")
    db = h2.tcp_app("db", mode=mode, banner=banner)
    mesh.start()
    return h1, h2, listen, db


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_all(s: socket.socket) -> bytes:
    return b"".join(iter(lambda: s.recv(65536), b""))


def summary(tail: bytes) -> dict:
    assert tail.startswith(b"EOF ") and tail.endswith(b"\n"), tail[:200]
    return json.loads(tail[4:])


def test_binary_protocol_round_trips_and_half_close(mesh: Mesh) -> None:
    h1, _, listen, db = setup(mesh)
    sent = hashlib.sha256()
    total = 0
    with socket.create_connection(split(listen), timeout=15) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        # A request/response binary protocol (length-prefixed frames), like a database driver.
        for i in range(200):
            payload = bytes(range(256)) + os.urandom(i) + b"\r\n\r\nGET / HTTP/1.1\r\n\x16\x03\x01\x00"
            frame = struct.pack("!I", len(payload)) + payload
            s.sendall(frame)
            n = struct.unpack("!I", recv_exact(s, 4))[0]
            assert n == len(payload)
            assert recv_exact(s, n) == payload
            sent.update(frame)
            total += len(frame)
        rtt = (time.monotonic() - t0) / 200
        # Then a bulk transfer in both directions at once.
        bulk = os.urandom(8 << 20)
        got = bytearray()
        t = threading.Thread(target=lambda: got.extend(recv_exact(s, len(bulk))))
        t.start()
        s.sendall(bulk)
        t.join(60)
        assert bytes(got) == bulk
        sent.update(bulk)
        total += len(bulk)
        # Half-close: we are done sending; the server still replies after seeing EOF.
        s.shutdown(socket.SHUT_WR)
        info = summary(recv_all(s))
    print(f"tcp link round trip {rtt * 1000:.2f} ms per frame")
    assert (info["bytes"], info["sha256"]) == (total, sent.hexdigest())
    assert rtt < 0.02, f"{rtt * 1000:.1f} ms per small round trip: Nagle/delayed-ACK on the link?"
    m = h1.metrics()
    assert metric(m, "glassmesh_tcp_connections_total", side="outbound", source="a", destination="db") >= 1
    assert metric(m, "glassmesh_bytes_total", side="outbound", source="a", destination="db",
                  direction="request") >= total


def test_server_speaks_first(mesh: Mesh) -> None:
    """Protocols where the server greets first (MySQL, SMTP, Redis sentinel) work: nothing waits for the client."""
    _, _, listen, _ = setup(mesh, banner="220 db ready\r\n")
    with socket.create_connection(split(listen), timeout=10) as s:
        assert recv_exact(s, 14) == b"220 db ready\r\n"
        s.sendall(b"PING\r\n")
        assert recv_exact(s, 6) == b"PING\r\n"


def test_sink_replies_after_client_half_close(mesh: Mesh) -> None:
    _, _, listen, _ = setup(mesh, mode="sink")
    data = os.urandom(5 << 20)
    with socket.create_connection(split(listen), timeout=15) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        info = summary(recv_all(s))
    assert (info["bytes"], info["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


def test_many_concurrent_tcp_connections(mesh: Mesh) -> None:
    _, _, listen, _ = setup(mesh)
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            with socket.create_connection(split(listen), timeout=15) as s:
                msg = f"conn {i} ".encode() * 1000
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                out = recv_all(s)
            if not (out.startswith(msg) and summary(out[len(msg):])["bytes"] == len(msg)):
                errors.append(f"conn {i}: sent {len(msg)} bytes, got back {len(out)}: {out[-120:]!r}")
        except Exception as e:  # collected and reported below
            errors.append(f"conn {i}: {e!r}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
