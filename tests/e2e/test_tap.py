"""`glassmesh tap` and `glassmesh capture` against a running mesh: real control plane, joined proxies, real app.

host1 runs service a (its proxy with two workers: the tap reaches every
serving process through the supervisor), host2 runs b with the HTTP echo
app. The tap shows each exchange at a's outbound proxy and at b's inbound
one, with headers and bodies only when asked and bodies cut at --body N.
Nobody without an operator credential may tap (performed: no certificate,
a host's certificate on the operator listener, the route on the proxy
listener). capture's pcap is read by the real tcpdump and tshark.
"""

from __future__ import annotations

import json
import queue
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.client import eventually
from tests.e2e.harness import HttpConn, Mesh
from tests.e2e.operator import cli_env
from tests.e2e.test_control_join import CLI, Control, https, joined_pair

BODY = b"0123456789abcdef"


class TapProc:
    """A `glassmesh tap` (or capture) process; its stdout lines arrive on a queue."""

    def __init__(self, cp: Control, *args: str) -> None:
        self.popen = subprocess.Popen([*CLI, *args], env=cli_env(cp.api_url, cp.cred), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def events(self, timeout: float) -> Iterator[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                return
            yield json.loads(line)

    def stop(self) -> str:
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        return self.popen.stderr.read() if self.popen.stderr else ""


@pytest.fixture
def two_hosts(mesh: Mesh) -> tuple[Control, str, str]:
    return joined_pair(mesh, workers=2)


def call(ip1: str, method: str, path: str, body: bytes | None = None, host: str = "b",
         extra: dict[str, str] | None = None) -> Any:
    with HttpConn(f"{ip1}:4140", timeout=10) as c:
        return c.request(method, path, {"Host": host, "Connection": "close", "x-test": "tap", **(extra or {})}, body)


def started(tap: TapProc) -> dict[str, Any]:
    first = next(tap.events(30), None)
    assert first is not None and "tap" in first, (first, tap.stop())
    return first["tap"]  # type: ignore[no-any-return]


def test_tap_shows_each_side_live_with_headers_and_bodies_cut_at_n_and_nothing_unasked(
        two_hosts: tuple[Control, str, str], mesh: Mesh) -> None:
    cp, ip1, _ = two_hosts
    full = TapProc(cp, "tap", "--to", "b", "--headers", "--body", "8", "-o", "json")
    plain = TapProc(cp, "tap", "--from", "a", "--status", "4xx", "-o", "json")
    try:
        assert started(full)["hosts"] == ["host1", "host2"]
        assert started(plain)["hosts"] == ["host1", "host2"]
        # The proxies take the asks within their long-poll: send until both sides of one request show.
        by_id: dict[str, dict[str, dict[str, Any]]] = {}
        sides: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while len(sides) < 2 and time.monotonic() < deadline:
            resp = call(ip1, "POST", "/orders?x=1", BODY, extra={"Authorization": "Bearer s3cret"})
            assert resp.status == 200
            for ev in full.events(1.0):
                # (an exchange already under way when its proxy took the ask has no bytes recorded)
                if ev.get("method") != "POST" or "request_body" not in ev:
                    continue
                sides = by_id.setdefault(ev["request_id"], {})
                sides[ev["side"]] = ev
                if len(sides) == 2:
                    break
        assert set(sides) == {"outbound", "inbound"}, by_id
        out, inb = sides["outbound"], sides["inbound"]
        assert (out["host"], out["from"], out["to"], out["path"], out["status"]) == ("host1", "a", "b", "/orders?x=1",
                                                                                     200)
        assert (inb["host"], inb["from"], inb["to"], inb["status"]) == ("host2", "a", "b", 200)
        rid = out["request_id"]
        assert out["endpoint"].endswith(":4143") and out["duration_ms"] > 0 and rid
        assert ["x-test", "tap"] in out["request_headers"] and ["Host", "b"] in out["request_headers"]
        assert any(k == "x-request-id" and v == rid for k, v in inb["request_headers"])  # added by a's proxy
        assert ["content-type", "application/json"] in out["response_headers"]
        # Credentials show as their size only (--show-secrets would show them).
        assert ["Authorization", "[redacted: 13 bytes]"] in out["request_headers"]
        assert "s3cret" not in json.dumps(out) + json.dumps(inb)
        for ev in (out, inb):
            assert ev["request_body"] == "01234567" and ev["request_body_truncated"] is True
            assert len(ev["response_body"]) == 8 and ev["response_body_truncated"] is True

        # The other tap asked for no headers, no bodies, and only 4xx from a: a mesh error with the hop that
        # made it, the app's 404; not the 200s, not the 503.
        assert call(ip1, "GET", "/status/503").status == 503
        assert call(ip1, "GET", "/status/404").status == 404
        assert call(ip1, "GET", "/", host="nosuch").status == 404
        got: list[dict[str, Any]] = []
        for ev in plain.events(20):
            if "method" in ev:
                got.append(ev)
            if {e["path"] for e in got} >= {"/status/404", "/"}:
                break
        assert got and all(e["status"] // 100 == 4 for e in got), got
        assert all(not any(k.endswith(("_headers", "_body")) for k in e) for e in got), got
        mesh_error = next(e for e in got if e["path"] == "/")
        assert (mesh_error["error"], mesh_error["hop"], mesh_error["to"]) == ("unknown_service", "host1/outbound",
                                                                             "nosuch")
        app_404 = [e for e in got if e["path"] == "/status/404"]
        assert {e["side"] for e in app_404} <= {"outbound", "inbound"} and "error" not in app_404[0]
    finally:
        err_full, err_plain = full.stop(), plain.stop()
    assert "Traceback" not in err_full + err_plain
    # The operators left: every proxy ends both taps (its log says so), and no tap observer is left behind.
    for name in ("proxy host1", "proxy host2"):
        proc = next(p for p in mesh.procs if p.name == name)

        def both_ended(proc: Any = proc) -> None:
            assert proc.log_text().count(": ended, the operator left") == 2, proc.log_text()

        eventually(both_ended, timeout=20)
        assert proc.log_text().count(": started for an operator (") == 2


def test_a_tap_over_its_rate_counts_what_it_drops_and_says_so(two_hosts: tuple[Control, str, str]) -> None:
    cp, ip1, _ = two_hosts
    tap = TapProc(cp, "tap", "--to", "b", "--path", "/burst", "--rate", "2", "-o", "json")
    try:
        started(tap)
        # Until both proxies have the tap (one request at a time: within their rate).
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while seen != {"outbound", "inbound"} and time.monotonic() < deadline:
            call(ip1, "GET", "/burst/warm")
            seen |= {ev["side"] for ev in tap.events(1.0) if ev.get("path") == "/burst/warm"}
        assert seen == {"outbound", "inbound"}
        time.sleep(1.5)  # a full bucket again: 2 each side
        t0 = time.monotonic()
        for i in range(30):
            assert call(ip1, "GET", f"/burst/{i}").status == 200
        took = time.monotonic() - t0
        kept, dropped, lines = 0, 0, []
        for ev in tap.events(8):
            if "dropped" in ev:
                dropped += ev["dropped"]
                lines.append(ev)
            elif ev.get("path", "").startswith("/burst/") and ev["path"] != "/burst/warm":
                kept += 1
    finally:
        tap.stop()
    # Each side keeps at most 2 + 2 a second of the 30; every other one is counted, never lost silently.
    assert kept + dropped == 60, (kept, dropped, took)
    assert kept <= 2 * (2 + 2 * took) + 2, (kept, took)
    assert {ev["host"] for ev in lines} == {"host1", "host2"} and all(ev["pid"] for ev in lines)


def test_tap_without_an_operator_credential_is_refused(two_hosts: tuple[Control, str, str], mesh: Mesh) -> None:
    cp, _, _ = two_hosts
    # No client certificate at all.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cp.api_url}/v1/tap?to=b&body=100", timeout=10, context=ctx)
    assert e.value.code == 401
    # A host's own identity, on the operator listener: not an operator.
    ident = mesh.root / "h1" / "identity"
    ctx.load_cert_chain(str(ident / "host.pem"), str(ident / "host.key"))
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cp.api_url}/v1/tap?to=b&body=100", timeout=10, context=ctx)
    assert e.value.code == 403 and "not an operator credential" in e.value.read().decode()
    # ... and on the proxy listener, where hosts are served: the route is not there.
    status, doc = https(cp, "/v1/tap?to=b", ident / "ca.pem", ident / "host.pem", ident / "host.key")
    assert status == 404, doc
    # A read-only operator sees what happened, not what was said: bodies, secrets and captures need admin.
    viewer = mesh.root / "viewer.pem"
    r = subprocess.run([*CLI, "ca", "issue", "--dir", str(cp.data / "ca"), "--operator", "viewer", "--role",
                        "read-only", "--out", str(viewer)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for args in (["tap", "--to", "b", "--body", "10"], ["tap", "--to", "b", "--headers", "--show-secrets"],
                 ["capture", "--link", "a:b", "--seconds", "1", "-w", str(mesh.root / "x.pcap")]):
        r = subprocess.run([*CLI, *args], env=cli_env(cp.api_url, viewer), capture_output=True, text=True, timeout=30)
        assert r.returncode == 4 and "'viewer' is read-only" in r.stderr and "admin role" in r.stderr, (args, r.stderr)
    assert not (mesh.root / "x.pcap").exists()
    r = subprocess.run([*CLI, "tap", "--to", "b", "--headers", "--seconds", "1", "-o", "json"],
                       env=cli_env(cp.api_url, viewer), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["tap"]["hosts"] == ["host1", "host2"], r.stderr
    # The CLI without a credential says where to get one, in one line, and sends nothing.
    r = subprocess.run([*CLI, "tap", "--to", "b", "--seconds", "2"], env=cli_env(cp.api_url, mesh.root / "nope.pem"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read the operator credential"), r.stderr


@pytest.mark.skipif(not shutil.which("tshark") or not shutil.which("tcpdump"), reason="needs tshark and tcpdump")
def test_capture_writes_a_pcap_that_tcpdump_and_tshark_read_as_http(two_hosts: tuple[Control, str, str],
                                                                    tmp_path: Path) -> None:
    cp, ip1, _ = two_hosts
    pcap = tmp_path / "ab.pcap"
    cap = TapProc(cp, "capture", "--link", "a:b", "--seconds", "6", "-w", str(pcap), "--snap", "4096")
    try:
        time.sleep(1.5)  # the proxies take the ask
        sent = []
        for i in range(8):
            path = f"/cap/{i}"
            resp = call(ip1, "POST" if i % 2 else "GET", path, BODY if i % 2 else None)
            sent.append((path, resp.status))
            time.sleep(0.3)
        assert call(ip1, "GET", "/status/503").status == 503
        cap.popen.wait(30)
        out = "".join(iter(lambda: cap.lines.get(timeout=1) or "", ""))
    finally:
        err = cap.stop()
    assert cap.popen.returncode == 0, err
    assert f"wrote {pcap}" in out and "host1" in out, out
    assert pcap.stat().st_mode & 0o777 == 0o600
    uris = subprocess.run(["tshark", "-r", str(pcap), "-Y", "http.request", "-T", "fields", "-e", "http.request.method",
                           "-e", "http.request.uri"], capture_output=True, text=True, timeout=60, check=True).stdout
    got = [line.split("\t") for line in uris.split("\n") if line]
    # Those sent once the proxies had the ask (the first may come before): in order, with their methods.
    caps = [(m, u) for m, u in got if u.startswith("/cap/")]
    assert len(caps) >= 6 and caps == sorted(caps, key=lambda x: int(x[1].rsplit("/", 1)[1])), got
    assert all(m == ("POST" if int(u.rsplit("/", 1)[1]) % 2 else "GET") for m, u in caps), got
    assert ["GET", "/status/503"] in got
    codes = subprocess.run(["tshark", "-r", str(pcap), "-Y", "http.response", "-T", "fields", "-e",
                            "http.response.code"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert codes.split().count("200") >= 6 and "503" in codes.split(), codes
    text = subprocess.run(["tcpdump", "-r", str(pcap), "-A", "-nn"], capture_output=True, text=True, timeout=60,
                          check=True).stdout
    assert "GET /cap/" in text and "x-request-id:" in text and "0123456789abcdef" in text, text[:3000]
