"""No plaintext crosses between hosts: a recording relay between host1's outbound and host2's inbound.

b's and db's endpoint address in host1's snapshot is the relay, which
forwards to host2's inbound and keeps every byte. A random marker sent in
the path, a header, the body, and over a TCP link, must not appear in what
the relay recorded, while the requests succeed. When tshark/dumpcap can
capture on loopback, a packet capture is checked the same way.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.e2e.harness import HttpConn, Mesh, app_headers, split


def _traffic(h1_outbound: str, tcp_listen: str, marker: str) -> None:
    body = (marker * 2000).encode()
    with HttpConn(h1_outbound) as c:
        r = c.request("POST", f"http://b/{marker}?q={marker}", {"Host": "b", "X-Marker": marker}, body)
        assert r.status == 200, r
        info = r.json()
        assert info["body_sha256"] == hashlib.sha256(body).hexdigest()
        assert app_headers(info, "x-marker") == [marker], "the app got the marker, so the response carries it too"
        r = c.request("GET", f"http://b/download?bytes=100000&m={marker}", {"Host": "b"})
        assert r.status == 200
    with socket.create_connection(split(tcp_listen), timeout=10) as s:
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        echoed = b"".join(iter(lambda: s.recv(65536), b""))
    assert echoed.startswith(body)


def _build(mesh: Mesh) -> tuple:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    tcp_listen = h1.tcp_link("a", "db")
    h2.http_app("b")
    h2.tcp_app("db")
    return h1, h2, tcp_listen


def test_relay_sees_only_tls(mesh: Mesh) -> None:
    h1, h2, tcp_listen = _build(mesh)
    relay = mesh.relay(h2.inbound)
    h1.set_service("b", [(relay.listen, "host2")])
    h1.set_service("db", [(relay.listen, "host2")], protocol="tcp")
    mesh.start()
    marker = "GMMARK" + secrets.token_hex(16)
    _traffic(h1.outbound("a"), tcp_listen, marker)
    time.sleep(0.2)
    assert relay.connections >= 2, "both the HTTP and the TCP link went through the relay"
    up, down = bytes(relay.up), bytes(relay.down)
    assert len(up) > 2 * 2000 * len(marker) and len(down) > 100_000, (len(up), len(down))
    assert up[:2] == b"\x16\x03" and down[:2] == b"\x16\x03", "both directions start with a TLS handshake record"
    rec = relay.recorded()
    for needle in (marker.encode(), b"glassmesh-source", b"HTTP/1.1", b"x-request-id"):
        assert needle not in rec, f"{needle!r} crossed between hosts in clear"


def _capture_tool() -> str | None:
    return shutil.which("dumpcap") or shutil.which("tshark")


def test_packet_capture_holds_no_plaintext(mesh: Mesh, tmp_path: Path) -> None:
    h1, h2, tcp_listen = _build(mesh)
    mesh.start()
    pcap = tmp_path / "link.pcapng"
    tool = _capture_tool()
    assert tool is not None, "tshark is missing: `make test` installs it (scripts/install-test-deps.sh)"
    cap = subprocess.Popen(
        [tool, "-i", "lo", "-f", f"tcp and host {h2.ip} and port 4143", "-w", str(pcap)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not pcap.exists() and time.monotonic() < deadline and cap.poll() is None:
            time.sleep(0.1)
        assert cap.poll() is None and pcap.exists(), (
            f"cannot capture on lo: {cap.stderr.read().decode(errors='replace')[:300]}")
        time.sleep(0.5)
        marker = "GMMARK" + secrets.token_hex(16)
        _traffic(h1.outbound("a"), tcp_listen, marker)
        time.sleep(0.5)
    finally:
        cap.send_signal(signal.SIGINT)
        try:
            cap.wait(10)
        except subprocess.TimeoutExpired:
            cap.kill()
            cap.wait()
    data = pcap.read_bytes()
    assert len(data) > 200_000, f"the capture holds only {len(data)} bytes: did it see the traffic?"
    assert marker.encode() not in data
