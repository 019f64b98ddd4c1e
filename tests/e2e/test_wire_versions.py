"""Two releases at once, as in a rolling upgrade: the versions rule (api/wire.py, protocols/mux.py).

Real processes: a `glassmesh control` and a `glassmesh proxy --control`, with a relay in this test
between them that changes the control plane's answers as a newer release would send them (extra
fields, a `requires` list, a higher wire version), passing acks and reports through untouched, so
the real control plane's `status` shows what the proxy made of them. And a real proxy's inbound
port spoken to in raw glassmesh-mux/1 by a "newer peer" that sends frame types and settings this
release does not know, or claims another major version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from glassmesh import __version__
from glassmesh.protocols import mux as m
from tests.e2e.harness import Mesh, client_context, get, split
from tests.e2e.operator import cli_env
from tests.e2e.test_control_watch import APP_PORT, CLI, CHost, Control, free_port, wait_for

MESH = """\
services:
  - name: a
    calls: [b, c]
  - name: b
    port: {port}
  - name: c
    port: {cport}
hosts:
  - {{name: host1, address: "{ip}:4143", services: [a, b{more}]}}
"""


class NewerControl:
    """A relay in front of a real control plane's plain proxy listener that rewrites its snapshots.

    `mutate(doc)` changes each full snapshot (JSON) on its way to the proxy; `wire` is the wire
    version the answers claim. A newer release hashes the fields it added too, so its digest is not
    the one this proxy computes over the fields it knows: the relay sends a digest of the body instead.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mutate: Callable[[dict[str, Any]], None] = lambda doc: None
        self.wire = "2"
        self.seen_headers: dict[str, str] = {}
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    async def _pass(self, request: web.Request) -> web.Response:
        self.seen_headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("glassmesh")}
        async with aiohttp.ClientSession() as s, s.request(
                request.method, self.upstream + request.path_qs, data=await request.read(),
                headers={k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")},
                timeout=aiohttp.ClientTimeout(total=60)) as r:
            body = await r.read()
            headers = {k: v for k, v in r.headers.items() if k.lower().startswith("glassmesh")}
            if request.method == "GET" and r.status == 200 and headers.get("glassmesh-snapshot-kind", "full") == "full":
                doc = json.loads(body)
                self.mutate(doc)
                body = json.dumps(doc).encode()
                headers["glassmesh-wire"] = self.wire
                headers["glassmesh-snapshot-hash"] = hashlib.sha256(body).hexdigest()
            return web.Response(status=r.status, body=body, headers=headers,
                                content_type=r.content_type or "application/json")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._pass)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)  # long-polls in flight are cut at close
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _host1(status: dict[str, Any]) -> dict[str, Any]:
    return next(h for h in status["hosts"] if h["name"] == "host1")


def _apply(cp: Control, text: str, after: int) -> int:
    """Apply `text`; the version of host1's snapshot it makes (read from status: a GET of the snapshot
    itself would speak for host1 without its proxy's headers)."""
    cp.apply(text)
    wait_for(lambda: _host1(cp.status())["latest"] > after, 10, "the new snapshot compiled")
    return int(_host1(cp.status())["latest"])


def test_a_proxy_takes_a_newer_control_planes_snapshot_and_refuses_one_it_cannot_honour(mesh: Mesh) -> None:
    cp = Control(mesh)
    cp.start()
    h = CHost(mesh, "host1", ["a", "b", "c"])
    mesh.start_app("http", f"{h.ip}:{APP_PORT}", "b1")
    cp.apply(MESH.format(port=APP_PORT, cport=APP_PORT + 1, ip=h.ip, more=""))
    newer = NewerControl(cp.url)
    try:
        # A newer control plane (wire 2) adds a top-level field and one in every service.
        def more_fields(doc: dict[str, Any]) -> None:
            doc["retry_budget"] = {"ratio": 0.2}
            for s in doc["services"]:
                s["weight_hint"] = 3

        newer.mutate = more_fields
        h.start(newer.url)
        h.wait_ready()
        # b's instance is reported (a health round), then in a snapshot the proxy takes: then it is served.
        wait_for(lambda: get(h.outbound, "/x", headers={"Host": "b"}).status == 200, 15, "b served")
        r = get(h.outbound, "/x", headers={"Host": "b"})
        assert r.status == 200 and r.header("x-app") == "b1", r
        latest = _host1(cp.status())["latest"]
        wait_for(lambda: _host1(cp.status())["running"] == latest, 10, "the proxy acked the newer snapshot")
        row = _host1(cp.status())
        assert row["last_reject"] is None, row
        assert row["proxy"]["wire"] == 1 and row["proxy"]["build"] == __version__, (row, newer.seen_headers)
        assert newer.seen_headers["glassmesh-wire"] == "1" and newer.seen_headers["glassmesh-build"] == __version__
        assert h.proxy is not None
        said = [ln for ln in h.proxy.log_text().splitlines() if "does not know" in ln]
        assert len(said) == 1 and "$.retry_budget" in said[0] and "$.services[0].weight_hint" in said[0], said

        # The next version requires a feature this proxy does not have: refused, the one in force kept.
        newer.mutate = lambda doc: (more_fields(doc), doc.__setitem__("requires", ["teleport"]))  # type: ignore[func-returns-value]
        refused = _apply(cp, MESH.format(port=APP_PORT, cport=APP_PORT + 1, ip=h.ip, more=", c"), latest)
        wait_for(lambda: (_host1(cp.status())["last_reject"] or {}).get("version") == refused, 10, "the reject")
        row = _host1(cp.status())
        assert row["running"] == latest and "requires feature teleport" in row["last_reject"]["reason"], row
        assert f"glassmesh {__version__}" in row["last_reject"]["reason"]
        assert h.ready()["snapshot_version"] == latest
        assert json.loads((h.data / "snapshot.json").read_text())["version"] == latest  # last-known-good kept
        r = get(h.outbound, "/x", headers={"Host": "b"})
        assert r.status == 200 and r.header("x-app") == "b1", r
        out = subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=30,
                             env=cli_env(cp.api_url, cp.cred)).stdout
        assert "requires feature teleport" in out and f"proxies: glassmesh {__version__} (wire 1): host1" in out, out

        # Two wire versions ahead: refused with both versions named, still serving what it has.
        newer.mutate = more_fields
        newer.wire = "3"
        far = _apply(cp, MESH.format(port=APP_PORT, cport=APP_PORT + 1, ip=h.ip, more=""), refused)
        wait_for(lambda: (_host1(cp.status())["last_reject"] or {}).get("version") == far, 10, "the reject")
        reason = _host1(cp.status())["last_reject"]["reason"]
        assert "wire version 3" in reason and "wire 1" in reason and "more than one release apart" in reason, reason
        assert get(h.outbound, "/x", headers={"Host": "b"}).status == 200

        # One ahead again: taken.
        newer.wire = "2"
        last = _apply(cp, MESH.format(port=APP_PORT, cport=APP_PORT + 1, ip=h.ip, more=", c"), far)
        wait_for(lambda: _host1(cp.status())["running"] == last, 10, "the proxy took the next one")

        # The other way round: a proxy two wire versions ahead is answered 426 with the reason, shown in status.
        req = urllib.request.Request(f"{cp.url}/v1/hosts/host1/snapshot?after=0&wait=0",
                                     headers={"glassmesh-wire": "3", "glassmesh-build": "9.9.9"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 426 and e.value.headers["glassmesh-wire"] == "1"
        reason = json.loads(e.value.read())["error"]
        assert reason.startswith("the proxy of host host1 speaks wire version 3, this control plane wire 1"), reason
        assert _host1(cp.status())["proxy"] == {"wire": 3, "build": "9.9.9", "features": [], "refused": reason}
    finally:
        newer.close()


# --------------------------------------------------------------------------- the mux


def _mux_to(mesh: Mesh) -> tuple[Any, Any]:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start()
    cert, key = mesh.cert_for("a")
    raw = socket.create_connection(split(h2.inbound), timeout=5)
    return h2, client_context(mesh.ca_pem, cert, key, alpn=("glassmesh-mux/1",)).wrap_socket(raw, server_hostname="b")


def _frames_until(sock: Any, dec: m.Decoder, done: Callable[[list[tuple[int, int, int, bytes]]], bool],
                  limit_s: float = 10) -> list[tuple[int, int, int, bytes]]:
    got: list[tuple[int, int, int, bytes]] = []
    deadline = time.monotonic() + limit_s
    while not done(got):
        assert time.monotonic() < deadline, f"no answer in time; frames so far: {got}"
        data = sock.recv(65536)
        if not data:
            break
        got += [(t, f, s, bytes(p)) for t, f, s, p in dec.feed(data)]
    return got


def _settings(workers: int, flags: int, pairs: dict[int, int]) -> bytes:
    """A SETTINGS frame as a peer of any version may write it (built here, not with this release's codec)."""
    payload = struct.pack("!I", workers) + b"".join(struct.pack("!HI", k, v) for k, v in pairs.items())
    return m.HEADER.pack(len(payload), m.SETTINGS, flags, 0) + payload


def _request(sock: Any, dec: m.Decoder, sid: int, path: str) -> bytes:
    req = f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode()
    sock.sendall(b"".join(m.data(sid, req, m.FLAG_OPEN | m.FLAG_FIN)))
    frames = _frames_until(sock, dec, lambda got: any(s == sid and f & m.FLAG_FIN for _, f, s, _ in got))
    return b"".join(p for t, _, s, p in frames if t == m.DATA and s == sid)


def test_a_mux_peer_sending_unknown_frames_and_settings_keeps_carrying_requests(mesh: Mesh) -> None:
    h2, s = _mux_to(mesh)
    with s:
        dec = m.Decoder()
        (t, _, _, payload), = _frames_until(s, dec, lambda got: bool(got))  # the proxy's SETTINGS come first
        assert t == m.SETTINGS and payload[4:10] == struct.pack("!HI", 1, 1 << 16 | 3)  # version 1.3
        # A newer peer: a setting this release does not know, and frame types it does not know, before
        # and between requests, on stream 0 and on a stream of their own.
        s.sendall(_settings(1, 0x80, {1: 1 << 16 | 7, 77: 5, 9000: 1 << 31}))
        s.sendall(m.HEADER.pack(3, 9, 0, 0) + b"new" + m.HEADER.pack(0, 200, 0xFF, 7))
        first = _request(s, dec, 1, "/one")
        assert first.startswith(b"HTTP/1.1 200") and b"/one" in first, first
        s.sendall(m.HEADER.pack(5, 17, 1, 3) + b"later")
        second = _request(s, dec, 3, "/two")
        assert second.startswith(b"HTTP/1.1 200") and b"/two" in second, second
    assert get(h2.admin, "/ready").status == 200


def test_a_mux_peer_of_another_major_version_is_refused_with_the_reason(mesh: Mesh) -> None:
    h2, s = _mux_to(mesh)
    with s:
        dec = m.Decoder()
        _frames_until(s, dec, lambda got: bool(got))
        s.sendall(_settings(1, 0, {1: 2 << 16}))
        frames = _frames_until(s, dec, lambda got: False)  # until the proxy closes the connection
    resets = [p.decode() for t, _, sid, p in frames if t == m.RESET and sid == 0]
    assert resets and "glassmesh-mux 2.0" in resets[0] and "incompatible major version" in resets[0], frames
    proxy = next(p for p in mesh.proxies() if "host2" in p.name)
    wait_for(lambda: "refused: peer speaks glassmesh-mux 2.0" in proxy.log_text(), 5, "the proxy logs why")
    assert get(h2.admin, "/ready").status == 200  # and serves on


def _binary_whole(data: bytes) -> bool:
    """Whether data holds a whole binary response: its head and as many body bytes as its Content-Length says."""
    end = data.find(b"\n")
    if not data.startswith(b"\0") or end < 0:
        return False
    parts = data[1:end - 1].split(b"\0")
    fields = dict(zip(parts[0:-1:2], parts[1:-1:2], strict=True))
    return len(data) - end - 1 >= int(fields.get(b"content-length", b"0"))


def _binary(sock: Any, dec: m.Decoder, sid: int, head: bytes, flags: int) -> bytes:
    sock.sendall(b"".join(m.data(sid, head, flags)))

    def data(got: list[tuple[int, int, int, bytes]]) -> bytes:
        return b"".join(p for t, _, s, p in got if t == m.DATA and s == sid)

    return data(_frames_until(sock, dec, lambda got: _binary_whole(data(got)) or any(
        s == sid and (t == m.RESET or f & m.FLAG_FIN) for t, f, s, _ in got)))


def test_a_mux_peer_of_minor_3_speaks_binary_heads_and_a_smuggling_shaped_one_is_refused(mesh: Mesh) -> None:
    """protocols/mux_head.py against a real inbound port: a binary request gets a binary answer from the app;
    a binary head whose field name would read as Transfer-Encoding to a lenient app never reaches it."""
    from glassmesh.protocols.mux_head import encode_request

    h2, s = _mux_to(mesh)
    with s:
        dec = m.Decoder()
        _frames_until(s, dec, lambda got: bool(got))
        s.sendall(_settings(1, 0, {1: 1 << 16 | 3}))
        got = _binary(s, dec, 1, encode_request(b"GET", b"/bin", [b"host", b"b"]), m.FLAG_OPEN)
        end = got.find(b"\n")
        assert got[:1] == b"\0" and end > 0, f"a binary answer: {got[:200]!r}"
        parts = got[1:end - 1].split(b"\0")
        fields = dict(zip(parts[0:-1:2], parts[1:-1:2], strict=True))
        body = got[end + 1:]
        assert parts[-1] == b"200" and int(fields[b"content-length"]) == len(body) and b"/bin" in body, got
        assert b"glassmesh-trail" in fields
        evil = encode_request(b"POST", b"/evil", [b"host", b"b", b"content-length", b"0", b"transfer-encoding ", b"chunked"])
        refused = _request_bytes_after(s, dec, 3, evil)
    assert refused.startswith(b"HTTP/1.1 400") and b"glassmesh-error: bad_request" in refused, refused
    assert b"not a token" in refused
    assert get(h2.admin, "/ready").status == 200


def _request_bytes_after(sock: Any, dec: m.Decoder, sid: int, head: bytes) -> bytes:
    sock.sendall(b"".join(m.data(sid, head, m.FLAG_OPEN | m.FLAG_FIN)))
    frames = _frames_until(sock, dec, lambda got: any(s == sid and (t == m.RESET or f & m.FLAG_FIN)
                                                      for t, f, s, _ in got))
    return b"".join(p for t, _, s, p in frames if t == m.DATA and s == sid)


def test_an_app_cannot_send_a_binary_head_to_its_outbound_port(mesh: Mesh) -> None:
    """Binary heads are read only on mux streams from peer proxies: from an app, 0x00 is no HTTP/1 and gets a 400."""
    from glassmesh.protocols.mux_head import encode_request

    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start()
    with socket.create_connection(split(h1.outbound("a")), timeout=5) as c:
        c.sendall(encode_request(b"GET", b"/", [b"host", b"b"]))
        got = b""
        while b"\r\n\r\n" not in got:
            data = c.recv(65536)
            if not data:
                break
            got += data
    assert got.startswith(b"HTTP/1.1 400") and b"glassmesh-error: bad_request" in got, got
