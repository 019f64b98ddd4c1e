"""What one peer can make a proxy hold: heads that never end, clients that never read, names that alias.

Each attack runs against real proxies and apps; memory is read from /proc while it runs, and a normal
client is served at the same time.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn, Mesh, RssSampler, app_headers, client_context, mesh_error, split

MB = 1024 * 1024


def _normal_calls(ab: AB, stop: threading.Event, results: list[int]) -> None:
    while not stop.is_set():
        try:
            with HttpConn(ab.outbound, timeout=10) as c:
                results.append(c.request("GET", "http://b/normal", {"Host": "b"}).status)
        except OSError:
            results.append(0)
        stop.wait(0.05)


def test_a_header_value_that_never_ends_is_cut_at_the_limit(ab: AB) -> None:
    """100 MB of one header value: 431 once the head passes max_head_bytes, RSS stays under 100 MB."""
    stop, normal = threading.Event(), []
    t = threading.Thread(target=_normal_calls, args=(ab, stop, normal), daemon=True)
    with RssSampler(ab.mesh.proxies()) as rss:
        t.start()
        s = socket.create_connection(split(ab.outbound), timeout=10)
        sent, answer = 0, b""
        try:
            s.sendall(b"GET http://b/big HTTP/1.1\r\nHost: b\r\nX-Big: ")
            block = b"a" * MB
            s.settimeout(0.001)
            while sent < 100 * MB:
                try:
                    s.sendall(block)
                    sent += len(block)
                except TimeoutError:
                    pass  # its buffers are full: see whether it answered
                except OSError:
                    break  # it closed on us
                try:
                    answer += s.recv(65536)
                    if answer:
                        break
                except (TimeoutError, BlockingIOError):
                    pass
                except OSError:
                    break
            s.settimeout(5)
            try:
                while b"\r\n\r\n" not in answer and (chunk := s.recv(65536)):
                    answer += chunk
            except OSError:
                pass
        finally:
            s.close()
        stop.set()
        t.join(15)
    assert answer.startswith(b"HTTP/1.1 431 "), (sent, answer[:200])
    assert sent < 8 * MB, f"the proxy took {sent / MB:.0f} MB of one header before refusing it"
    peak = max(rss.peak_kb.values()) / 1024
    assert peak < 100, f"proxy RSS reached {peak:.0f} MB ({rss.report()})"
    assert normal and all(x == 200 for x in normal), normal
    assert ab.b.stats()["paths"].count("/big") == 0


def test_a_response_head_that_never_ends_is_a_502(ab: AB) -> None:
    """An app (or a peer) whose response head never ends: 502 naming the hop, memory bounded."""
    with RssSampler(ab.mesh.proxies()) as rss, HttpConn(ab.outbound, timeout=30) as c:
        r = c.request("GET", f"http://b/endless-header?bytes={200 * MB}", {"Host": "b"})
    assert r.status == 502, r
    assert mesh_error(r)[0] == "upstream_protocol_error", r
    peak = max(rss.peak_kb.values()) / 1024
    assert peak < 100, f"proxy RSS reached {peak:.0f} MB ({rss.report()})"


def test_header_names_with_underscores_never_reach_the_app(ab: AB) -> None:
    """`glassmesh_source` and `Transfer_Encoding` read as their dashed twins by WSGI: dropped, as nginx does."""
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/u", [("Host", "b"), ("glassmesh_source", "spiffe://glassmesh.local/service/admin"),
                                            ("Transfer_Encoding", "chunked"), ("X_Custom", "1"), ("X-Kept", "1")])
    assert r.status == 200, r
    doc = r.json()
    for name in ("glassmesh_source", "transfer_encoding", "x_custom"):
        assert app_headers(doc, name) == [], (name, doc)
    assert app_headers(doc, "x-kept") == ["1"]
    assert app_headers(doc, "glassmesh-source") == ["spiffe://glassmesh.local/service/a"]


def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(mesh: Mesh) -> None:
    """Asking for 200 MB and reading none: the proxy does not hold the connection (and its upstream) forever."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    h1.timeouts = {"idle_ms": 2000}
    mesh.start()
    s = socket.create_connection(split(h1.outbound("a")), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET http://b/download?bytes=209715200 HTTP/1.1\r\nHost: b\r\n\r\n")
    t0 = time.monotonic()
    time.sleep(6)  # read nothing
    got, how = 0, "EOF"
    try:
        while chunk := s.recv(1 << 20):
            got += len(chunk)
    except OSError as e:
        how = repr(e)
    finally:
        s.close()
    assert "ConnectionResetError" in how, f"the proxy did not reset the stalled connection ({how}, {got} bytes)"
    assert got < 20 * MB, f"{got / MB:.0f} MB were still queued for a client that had stopped reading"
    assert time.monotonic() - t0 < 15


def test_a_peer_that_ignores_the_mux_window_is_cut_off(ab: AB) -> None:
    """A peer (any mesh identity) pipelines two requests on one stream, so that the stream stops reading,
    then pushes data past the window it was granted: the connection ends, memory stays bounded."""
    import struct as st

    if ab.mesh.peer_protocol != "mux":
        return  # the same attack on http1 peers is the head/body limits above
    cert, key = ab.mesh.cert_for("a")
    ctx = client_context(ab.mesh.ca_pem, cert, key, alpn=("glassmesh-mux/1",))
    pushed = 0
    with RssSampler(ab.mesh.proxies()) as rss, socket.create_connection(split(ab.h2.inbound), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="b") as s:
        assert s.selected_alpn_protocol() == "glassmesh-mux/1"
        head = (b"GET /download?bytes=100000000 HTTP/1.1\r\nHost: b\r\n\r\n"  # its answer fills our window
                b"GET /second HTTP/1.1\r\nHost: b\r\n\r\n")  # pipelined: the stream stops reading
        s.sendall(st.pack("!IBBI", len(head), 0, 1, 1) + head)  # DATA, OPEN, stream 1
        junk = b"x" * (256 * 1024)
        frame = st.pack("!IBBI", len(junk), 0, 0, 1) + junk
        s.settimeout(5)
        try:
            while pushed < 1024 * MB:
                s.sendall(frame)
                pushed += len(junk)
        except (OSError, ssl.SSLError):
            pass
    assert pushed < 32 * MB, f"the inbound took {pushed / MB:.0f} MB beyond a 1 MiB window before ending it"
    peak = max(rss.peak_kb.values()) / 1024
    assert peak < 100, f"proxy RSS reached {peak:.0f} MB ({rss.report()})"
    with HttpConn(ab.outbound) as c:  # everyone else is still served
        assert c.request("GET", "http://b/after", {"Host": "b"}).status == 200


def test_an_apps_own_glassmesh_error_is_not_a_mesh_error(mesh: Mesh) -> None:
    """An app answering 502 with `glassmesh-error: connect_refused; hop=host2/inbound` would make the caller's
    proxy send the POST, which the app already took, to another endpoint. It is the app's answer, as is."""
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    b2, b3 = h2.http_app("b"), h3.http_app("b")
    mesh.start()
    for _ in range(4):  # round robin: both instances get asked
        with HttpConn(h1.outbound("a")) as c:
            r = c.request("POST", "http://b/forge-error", {"Host": "b", "Content-Length": "0"})
        assert r.status == 502 and r.body == b"forged\n", r
        assert "glassmesh-error" not in {k.lower() for k, _ in r.headers}, r.headers
    hits = b2.stats()["paths"].count("/forge-error") + b3.stats()["paths"].count("/forge-error")
    assert hits == 4, f"4 POSTs reached the apps {hits} times: a forged reason made the mesh resend them"
