"""TCP links with real apps (redis-server, a Thrift service), their metrics, and an app that is down."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from glassmesh.protocols import mux as mx
from tests.e2e.harness import (
    REPO,
    Host,
    Mesh,
    RssSampler,
    client_context,
    eventually,
    has_series,
    metric,
    split,
    wait_port,
)

THRIFT = REPO / "bench" / "tools" / "thrift_echo.py"


def redis(mesh: Mesh, host: Host, service: str = "redis") -> str:
    """A real redis-server on `host`'s address (no persistence), an instance of the tcp service."""
    addr = f"{host.ip}:{host.app_port()}"
    ip, port = split(addr)
    p = mesh.spawn(f"redis@{host.name}", ["redis-server", "--bind", ip, "--port", str(port), "--save", "",
                                         "--appendonly", "no", "--dir", str(mesh.root)])
    wait_port(addr, p)
    host.add_instance(service, addr, "tcp")
    return addr


def ping(s: socket.socket) -> None:
    s.sendall(b"PING\r\n")
    assert s.recv(64) == b"+PONG\r\n"


def redis_cli(addr: str, *args: str) -> str:
    ip, port = split(addr)
    r = subprocess.run(["redis-cli", "-h", ip, "-p", str(port), *args], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_redis_through_a_tcp_link_shares_one_tls_connection(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    redis(mesh, h2)
    link = h1.tcp_link("a", "redis")
    mesh.start()
    assert redis_cli(link, "SET", "greeting", "hello through the mesh") == "OK"
    assert redis_cli(link, "GET", "greeting") == "hello through the mesh"
    value = bytes(range(256)) * 4000  # binary-safe, about 1 MB, in one RESP command
    with socket.create_connection(split(link), timeout=15) as s:
        s.sendall(b"*3\r\n$3\r\nSET\r\n$3\r\nbin\r\n$%d\r\n%s\r\n" % (len(value), value))
        assert s.recv(16) == b"+OK\r\n"
        s.sendall(b"*2\r\n$3\r\nGET\r\n$3\r\nbin\r\n")
        want = b"$%d\r\n%s\r\n" % (len(value), value)
        got = b""
        while len(got) < len(want):
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {len(got)} bytes"
            got += chunk
        assert got == want
    for _ in range(20):  # redis-benchmark style: many short connections
        with socket.create_connection(split(link), timeout=10) as s:
            ping(s)
    m = h1.metrics()
    conns = metric(m, "glassmesh_tcp_connections_total", side="outbound", source="a", destination="redis")
    handshakes = metric(m, "glassmesh_tls_handshakes_total", side="outbound", source="a", destination="redis")
    assert conns >= 23
    # Every client connection is a stream of the link's one TLS connection, not a TLS connection of its own.
    assert handshakes == 1, f"{handshakes:.0f} TLS handshakes for {conns:.0f} client connections"


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_with_200_clients_connected(mesh: Mesh, workers: int) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    redis(mesh, h2)
    link = h1.tcp_link("a", "redis")
    mesh.start(workers=workers)  # with 2, /metrics is both workers' counters merged
    clients = []
    try:
        for _ in range(200):
            s = socket.create_connection(split(link), timeout=15)
            clients.append(s)
            ping(s)
        m1, m2 = h1.metrics(), h2.metrics()
        assert metric(m1, "glassmesh_client_connections") == 200
        assert metric(m1, "glassmesh_tcp_open_connections", side="outbound", source="a", destination="redis") == 200
        assert metric(m2, "glassmesh_tcp_open_connections", side="inbound", source="a", destination="redis") == 200
        assert metric(m1, "glassmesh_tcp_connections_total", side="outbound", destination="redis") == 200
        assert metric(m2, "glassmesh_tcp_connections_total", side="inbound", destination="redis") == 200
        for m, side in ((m1, "outbound"), (m2, "inbound")):
            assert has_series(m, "glassmesh_link_mtls", side=side, source="a", destination="redis",
                              tls_version="TLSv1.3"), side
            # A tcp link has no requests: no series of all zeros pretending it has.
            assert not has_series(m, "glassmesh_requests_total", destination="redis"), side
            assert not has_series(m, "glassmesh_request_duration_seconds_count", destination="redis"), side
        assert metric(m1, "glassmesh_bytes_total", side="outbound", destination="redis", direction="request") == 1200
        assert metric(m1, "glassmesh_bytes_total", side="outbound", destination="redis", direction="response") == 1400
    finally:
        for s in clients:
            s.close()

    def all_closed() -> None:
        m1, m2 = h1.metrics(), h2.metrics()
        assert metric(m1, "glassmesh_client_connections") == 0
        assert metric(m1, "glassmesh_tcp_open_connections", destination="redis") == 0
        assert metric(m2, "glassmesh_tcp_open_connections", destination="redis") == 0

    eventually(all_closed, timeout=10)


def test_app_down_resets_the_client_counts_and_logs_once(mesh: Mesh) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h2.add_instance("db", f"{h2.ip}:{h2.app_port()}", "tcp")  # nothing listens there
    link = h1.tcp_link("a", "db")
    mesh.start()
    for _ in range(20):
        # Not a clean EOF after 0 bytes, which a client takes for "the server closed": a reset (which
        # can come so fast that the connect itself reports it).
        with pytest.raises((ConnectionResetError, BrokenPipeError)), \
                socket.create_connection(split(link), timeout=10) as s:
            s.sendall(b"PING\r\n")
            data = s.recv(64)
            raise AssertionError(f"read {data!r} instead of a reset")

    def counted() -> None:
        assert metric(h1.metrics(), "glassmesh_tcp_connect_failures_total", side="outbound", source="a",
                      destination="db", reason="connect_refused") == 20
        assert metric(h2.metrics(), "glassmesh_tcp_connect_failures_total", side="inbound", source="a",
                      destination="db", reason="connect_refused") == 20

    eventually(counted, timeout=10)
    assert h2.proxy is not None and h1.proxy is not None
    lines = [x for x in h2.proxy.log_text().splitlines() if "tcp link a -> db (inbound)" in x]
    assert len(lines) == 1, lines  # one line per 10 s, not one per connection
    assert "connect" in lines[0] and h2.ip in lines[0], lines[0]
    assert [x for x in h1.proxy.log_text().splitlines() if "tcp link a -> db (outbound)" in x]


@pytest.mark.parametrize("protocol,transport", [("binary", "buffered"), ("compact", "framed")])
def test_thrift_echo_of_megabytes_is_byte_identical(mesh: Mesh, protocol: str, transport: str) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    addr = f"{h2.ip}:{h2.app_port()}"
    ip, port = split(addr)
    opts = ["--protocol", protocol, "--transport", transport]
    p = mesh.spawn("thrift@host2", [sys.executable, str(THRIFT), "serve", str(port), "--host", ip, *opts])
    wait_port(addr, p)
    h2.add_instance("echo", addr, "tcp")
    link = h1.tcp_link("a", "echo")
    mesh.start()
    lip, lport = split(link)
    for size in (100, 6 << 20):
        r = subprocess.run([sys.executable, str(THRIFT), "echo", str(lport), str(size), "--host", lip, *opts],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert '"identical": true' in r.stdout, r.stdout


def test_peers_carrying_http1_use_a_tls_connection_per_client(mesh: Mesh) -> None:
    """"peer_protocol": "http1" keeps the older way (glassmesh-tcp/1), which inbounds still take."""
    mesh.peer_protocol = "http1"
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    redis(mesh, h2)
    link = h1.tcp_link("a", "redis")
    mesh.start()
    for _ in range(5):
        with socket.create_connection(split(link), timeout=10) as s:
            ping(s)
            s.shutdown(socket.SHUT_WR)  # redis closes after our half-close: the EOF crosses both ways
            deadline = time.monotonic() + 10
            while s.recv(64) and time.monotonic() < deadline:
                pass
    assert redis_cli(link, "SET", "k", "v") == "OK"
    m1, m2 = h1.metrics(), h2.metrics()
    assert metric(m1, "glassmesh_tls_handshakes_total", side="outbound", destination="redis") == 6
    assert has_series(m2, "glassmesh_link_mtls", side="inbound", source="a", destination="redis")
    assert not has_series(m2, "glassmesh_requests_total", destination="redis")


def test_a_client_that_does_not_read_holds_up_only_its_own_connection(mesh: Mesh) -> None:
    """Each client connection is a stream with its own window: a stalled one neither stalls the
    others on the link's shared TLS connection nor piles up in the proxies' memory."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h2.tcp_app("db", mode="echo")
    link = h1.tcp_link("a", "db")
    mesh.start()
    size = 96 << 20
    data = os.urandom(1 << 20) * (size >> 20)
    sent = [0]
    with socket.create_connection(split(link), timeout=60) as stalled, RssSampler(mesh.proxies()) as rss:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        writer = threading.Thread(target=lambda: sent.__setitem__(0, stalled.sendall(data) or size), daemon=True)
        writer.start()  # the echo comes back and nobody reads it: the writer soon blocks
        time.sleep(2)
        assert writer.is_alive(), "96 MB went through a link whose client reads nothing: no backpressure"
        t0 = time.monotonic()
        for _ in range(50):  # another connection of the same link meanwhile
            with socket.create_connection(split(link), timeout=10) as s:
                s.sendall(b"ping")
                assert s.recv(16) == b"ping"
        took = time.monotonic() - t0
        got = hashlib.sha256()
        n = 0
        while n < size:
            chunk = stalled.recv(1 << 20)
            assert chunk, f"closed after {n} bytes"
            got.update(chunk)
            n += len(chunk)
        writer.join(30)
    assert sent[0] == size and got.hexdigest() == hashlib.sha256(data).hexdigest()
    assert took < 10, f"50 round trips on other connections took {took:.1f} s beside a stalled one"
    peak = {pid: kb for pid, kb in rss.peak_kb.items() if rss.names[pid].startswith("proxy")}
    assert peak and max(peak.values()) < 100 * 1024, rss.report()


def test_a_peer_that_breaks_the_protocol_loses_only_its_stream(mesh: Mesh) -> None:
    """A hand-written mux peer (real mTLS, the caller's certificate) sends bytes after its FIN on a tcp
    stream: that stream is reset, the connection and its other streams go on."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h2.tcp_app("db", mode="echo")
    h1.tcp_link("a", "db")  # so that "a" is a service with a certificate
    mesh.start()
    cert, key = mesh.cert_for("a")
    ctx = client_context(mesh.ca_pem, cert, key, alpn=[mx.ALPN_MUX])
    ctx.check_hostname = False
    dec = mx.Decoder()
    with socket.create_connection(split(h2.inbound), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="db") as s:

        def frames_until(pred) -> list:
            got: list = []
            deadline = time.monotonic() + 10
            while not any(pred(f) for f in got):
                assert time.monotonic() < deadline, f"not the frame expected within 10 s: {got}"
                data = s.recv(65536)
                assert data, f"the inbound proxy closed the whole connection (frames before: {got})"
                got += dec.feed(data)
            return got

        settings = frames_until(lambda f: f[0] == mx.SETTINGS)
        assert any(f[0] == mx.SETTINGS and f[1] & mx.SETTINGS_TCP_STREAMS for f in settings)
        # Bytes after our FIN, in the same write (the stream must still be there to see them).
        s.sendall(b"".join(mx.data(1, b"ping", mx.FLAG_OPEN | mx.FLAG_TCP | mx.FLAG_FIN) + mx.data(1, b"late")))
        reset = frames_until(lambda f: f[0] == mx.RESET and f[2] == 1)
        assert [bytes(f[3]) for f in reset if f[0] == mx.RESET] == [b"protocol_error"]
        s.sendall(b"".join(mx.data(3, b"still here", mx.FLAG_OPEN | mx.FLAG_TCP)))
        frames_until(lambda f: f[0] == mx.DATA and f[2] == 3 and f[3] == b"still here")
