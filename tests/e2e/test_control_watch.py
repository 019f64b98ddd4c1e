"""Proxies watching a real control plane: first snapshot, instances coming and going, outages, rejects.

Real processes throughout: `glassmesh control`, `glassmesh proxy --control`
on their own loopback addresses with their state in DIR (certificates in
DIR/certs, last-known-good snapshot in DIR/snapshot.json), and the echo apps
of apps.py. A steady client calls b as service a through host1's proxy and
records every answer, so "0 failed requests" is counted, not sampled.

The control plane is SIGKILLed for OUTAGE_S (60 s) under steady traffic
(~200 requests/s): not one request may fail, the proxy must say how stale
its snapshot is (/ready and glassmesh_snapshot_age_seconds >= 60), serve
from disk when restarted meanwhile, and reconnect when the control plane is
back. Changes after the first snapshot arrive as deltas, and the proxy ends
up with exactly the snapshot the control plane compiled (its /config and its
last-known-good file are compared with the control plane's).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from glassmesh.buildinfo import hot_path_doc
from tests.e2e.harness import (
    PROXY_CMD,
    App,
    HttpConn,
    Mesh,
    Proc,
    free_port,
    fresh_ip,
    get,
    has_series,
    metric,
    parse_metrics,
    split,
    wait_port,
)
from tests.e2e.operator import api

BUILD = hot_path_doc()["build"]  # what this tree's proxies say in their acks

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
APP_PORT = 18080
HEALTH_INTERVAL_S = 2.0  # the snapshot's default health_interval_ms
OUTAGE_S = 60.0  # how long the control plane stays SIGKILLed under traffic

MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: {port}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
  - {{name: host3, address: "{ip3}:4143", services: [{host3}]}}
"""


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read()) if r.status == 200 else None


class Control:
    """A `glassmesh control` process that can be SIGKILLed and started again on the same ports and data.

    `url` is what these proxies (certificate files by hand, no join) are given: the insecure plain
    listener on loopback; `api_url` is the operator API (TLS, the admin credential it writes).
    """

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.port, self.iport = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.iport}"
        self.api_url = f"https://127.0.0.1:{self.port}"
        self.data = mesh.root / "control"
        self.cred = self.data / "admin.pem"
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = self.mesh.spawn("control", [*CLI, "control", "--data", str(self.data),
                                                "--listen", f"127.0.0.1:{self.port}",
                                                "--insecure-proxy-listen", f"127.0.0.1:{self.iport}"])
        wait_port(f"127.0.0.1:{self.port}", self.proc)
        wait_port(f"127.0.0.1:{self.iport}", self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def apply(self, text: str) -> dict[str, Any]:
        status, out = api(self.api_url, "POST", "/v1/apply", {"yaml": text}, self.cred)
        assert status == 200 and out is not None, (status, out)
        return out  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return api(self.api_url, "GET", "/v1/status", cred=self.cred)[1]  # type: ignore[no-any-return]

    def snapshot(self, host: str) -> dict[str, Any]:
        return http_json(f"{self.url}/v1/hosts/{host}/snapshot?after=0&wait=0")  # type: ignore[no-any-return]


class CHost:
    """A host whose proxy runs with --control: its data dir holds the CA bundle and its services' certs."""

    def __init__(self, mesh: Mesh, name: str, services: list[str]) -> None:
        self.mesh, self.name = mesh, name
        self.ip = fresh_ip()
        self.inbound, self.admin, self.outbound = f"{self.ip}:4143", f"{self.ip}:4191", f"{self.ip}:4140"
        self.data = mesh.root / f"{name}-data"
        (self.data / "certs").mkdir(parents=True)
        shutil.copy(mesh.ca_pem, self.data / "certs" / "ca.pem")
        for svc in services:
            mesh.ca.issue("service", svc).write(self.data / "certs" / svc)
        self.proxy: Proc | None = None

    def start(self, url: str, extra: list[str] | None = None) -> Proc:
        self.proxy = self.mesh.spawn(f"proxy {self.name}", [*PROXY_CMD, "--control", url, "--host", self.name,
                                                            "--data", str(self.data), *(extra or [])])
        return self.proxy

    def stop(self) -> None:
        assert self.proxy is not None
        self.proxy.stop()

    def ready(self) -> dict[str, Any]:
        r = get(self.admin, "/ready", timeout=2)
        assert r.status == 200, r
        return r.json()  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proxy is not None
            if not self.proxy.alive():
                raise RuntimeError(f"proxy {self.name} exited:\n{self.proxy.log_text()}")
            try:
                return self.ready()
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"proxy {self.name} not ready:\n{self.proxy.log_text()}") from None
                time.sleep(0.05)

    def metrics(self) -> Any:
        return parse_metrics(get(self.admin, "/metrics").body.decode())


class Traffic:
    """Steady calls a -> b through host1's outbound (keep-alive, ~200/s); every answer is recorded."""

    def __init__(self, outbound: str, rate: float = 200.0) -> None:
        self.outbound, self.period = outbound, 1.0 / rate
        self.log: list[tuple[float, int, str, str]] = []  # (monotonic time, status, x-app, glassmesh-error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: HttpConn | None = None
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                if conn is None:
                    conn = HttpConn(self.outbound, timeout=10)
                r = conn.request("GET", "/hello", {"Host": "b"})
                self.log.append((t, r.status, r.header("x-app") or "", r.header("glassmesh-error") or ""))
                if (r.header("connection") or "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, EOFError, ValueError) as e:
                self.log.append((t, 0, "", f"client: {e!r}"))
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(max(0.0, self.period - (time.monotonic() - t)))
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def failures(self, since: float = 0.0) -> list[tuple[float, int, str, str]]:
        return [x for x in self.log if x[0] >= since and x[1] != 200]

    def served_by(self, app: str, since: float = 0.0) -> list[float]:
        return [x[0] for x in self.log if x[0] >= since and x[2] == app]

    def wait_served_by(self, app: str, since: float, limit: float) -> float:
        deadline = since + limit
        while time.monotonic() < deadline + 0.5:
            hits = self.served_by(app, since)
            if hits:
                return hits[0] - since
            time.sleep(0.02)
        raise AssertionError(f"{app} got no request within {limit}s; last answers: {self.log[-5:]}")


def b_hosts(snap: dict[str, Any]) -> list[str]:
    return [e["host"] for s in snap["services"] if s["name"] == "b" for e in s.get("endpoints", [])]


def assert_same_snapshot(h: CHost, cp: Control) -> dict[str, Any]:
    """The proxy holds exactly what the control plane compiled for it: in force (/config) and on disk.

    /config shows the snapshot in force with its file paths resolved against
    the data dir; the last-known-good file has them as the control plane wrote
    them. Returns the control plane's snapshot.
    """
    for _ in range(50):  # until no change is in flight between the two reads
        want = cp.snapshot(h.name)
        if h.ready()["snapshot_version"] == want["version"] == cp.snapshot(h.name)["version"]:
            break
        time.sleep(0.05)
    assert json.loads((h.data / "snapshot.json").read_text()) == want
    served = json.loads(get(h.admin, "/config").body)
    resolved = {**want, "trust_bundle": str(h.data / want["trust_bundle"]),
                "local_services": [{**ls, "cert": str(h.data / ls["cert"]), "key": str(h.data / ls["key"])}
                                   for ls in want["local_services"]]}
    assert served == resolved
    return want


def wait_for(pred: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        if pred():
            return time.monotonic()
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout}s: {what}")


class Topo:
    """host1 runs a (the caller), host2 and host3 run b; b@host2 is up, b@host3 is started by the test."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.cp = Control(mesh)
        self.h1 = CHost(mesh, "host1", ["a"])
        self.h2 = CHost(mesh, "host2", ["b"])
        self.h3 = CHost(mesh, "host3", ["b"])
        self.b2 = mesh.start_app("http", f"{self.h2.ip}:{APP_PORT}", "b2")
        self.b3: App | None = None

    def yaml(self, host3_runs_b: bool = True) -> str:
        return MESH.format(port=APP_PORT, ip1=self.h1.ip, ip2=self.h2.ip, ip3=self.h3.ip,
                           host3="b" if host3_runs_b else "")

    def start_b3(self) -> App:
        self.b3 = self.mesh.start_app("http", f"{self.h3.ip}:{APP_PORT}", "b3")
        return self.b3

    def hosts(self) -> list[CHost]:
        return [self.h1, self.h2, self.h3]

    def up(self, h1_args: list[str] | None = None) -> None:
        """Control plane, config, both b instances and the three proxies; returns once host1 sees both bs."""
        cp = self.cp
        cp.start()
        cp.apply(self.yaml())
        self.start_b3()
        self.h1.start(cp.url, h1_args)
        self.h2.start(cp.url)
        self.h3.start(cp.url)
        for h in self.hosts():
            h.wait_ready()
        wait_for(lambda: b_hosts(cp.snapshot("host1")) == ["host2", "host3"], 3 * HEALTH_INTERVAL_S,
                 "both registered")
        # ... and host1's proxy has that snapshot in force, not just the control plane.
        want = cp.snapshot("host1")["version"]
        wait_for(lambda: self.h1.ready()["snapshot_version"] >= want, 3, "host1 has both")


@pytest.fixture
def topo(mesh: Mesh) -> Topo:
    return Topo(mesh)


def test_first_snapshot_instances_come_and_go(topo: Topo) -> None:
    h1, h2, h3, cp = topo.h1, topo.h2, topo.h3, topo.cp
    # Proxies started before the control plane exists: no snapshot on disk, so they wait, unbound, and retry.
    for h in topo.hosts():
        h.start(cp.url)
    wait_for(lambda: "waiting for the first snapshot" in h1.proxy.log_text(), 10, "the proxy says it waits")  # type: ignore[union-attr]
    time.sleep(1.0)
    with pytest.raises(OSError):
        get(h1.admin, "/ready", timeout=0.5)
    assert not (h1.data / "snapshot.json").exists()

    cp.start()
    cp.apply(topo.yaml())
    for h in topo.hosts():
        h.wait_ready()
    doc = h1.ready()
    assert doc["snapshot_source"] == "control" and doc["control_plane"]["connected"] is True
    assert doc["snapshot_age_s"] == 0
    lkg = json.loads((h1.data / "snapshot.json").read_text())
    assert lkg["version"] == doc["snapshot_version"] and lkg["local_services"][0]["cert"] == "certs/a.pem"
    m = h1.metrics()
    assert metric(m, "glassmesh_control_plane_connected") == 1 and metric(m, "glassmesh_snapshot_age_seconds") == 0

    # b@host2 is registered by host2's health check; b@host3 has no app yet (reported unhealthy).
    wait_for(lambda: b_hosts(cp.snapshot("host1")) == ["host2"], 3 * HEALTH_INTERVAL_S, "b@host2 registered")
    want = cp.snapshot("host1")["version"]
    wait_for(lambda: h1.ready()["snapshot_version"] >= want, 3, "host1's proxy has b@host2")
    traffic = Traffic(h1.outbound)
    try:
        wait_for(lambda: traffic.served_by("b2"), 5, "traffic flows a -> b2")
        unhealthy = cp.status()["unhealthy"]
        assert [(u["host"], u["detail"]) for u in unhealthy] == [("host3", "connect refused")], unhealthy

        # A new instance: its app starts, host3's check turns green, it registers and gets traffic.
        registered: list[float] = []
        started = time.monotonic()
        topo.start_b3()
        watcher = threading.Thread(target=lambda: registered.append(wait_for(
            lambda: "host3" in b_hosts(cp.snapshot("host1")), HEALTH_INTERVAL_S + 3, "b@host3 registered")))
        watcher.start()
        to_traffic = traffic.wait_served_by("b3", started, HEALTH_INTERVAL_S + 2.0)
        watcher.join()
        assert registered, "b@host3 never registered"
        from_registration = started + to_traffic - registered[0]
        print(f"new instance: traffic {to_traffic:.2f}s after its app started, {from_registration:.2f}s after "
              f"registering")
        assert from_registration < 2.0

        # That change reached host1 as a delta (b's endpoints), and host1 holds exactly what was compiled.
        want = assert_same_snapshot(h1, cp)
        updates = h1.ready()["snapshot_updates"]
        assert updates["full"] == 1 and updates["delta"] >= 1 and updates["delta_fallbacks"] == 0, updates
        m = h1.metrics()
        assert metric(m, "glassmesh_snapshot_updates_total", kind="full") == 1
        assert metric(m, "glassmesh_snapshot_updates_total", kind="delta") >= 1
        assert has_series(m, "glassmesh_snapshot_delta_fallbacks_total")
        assert metric(m, "glassmesh_snapshot_delta_fallbacks_total") == 0
        assert (f"snapshot version {want['version']} came as a delta from version"  # type: ignore[union-attr]
                in h1.proxy.log_text()) and ": 1 service changed, 0 removed" in h1.proxy.log_text()  # type: ignore[union-attr]

        # A removed instance (host3 no longer runs b): out of rotation within 2 s, 0 failed requests.
        # host3's own snapshot drops its b listeners (outbound and inbound): it takes it and closes them.
        cut = time.monotonic()
        cp.apply(topo.yaml(host3_runs_b=False))
        wait_for(lambda: "host3" not in b_hosts(cp.snapshot("host1")), 2, "host1's snapshot drops b@host3")
        stop_at = wait_for(lambda: not traffic.served_by("b3", time.monotonic() - 0.3), 3, "b3 out of rotation")
        assert stop_at - cut < 2.3  # the 0.3 s look-back window above
        time.sleep(0.5)
        assert not traffic.served_by("b3", cut + 2.0)
        assert traffic.failures() == [], traffic.failures()[:5]
        assert_same_snapshot(h1, cp)
        assert h1.ready()["snapshot_updates"]["delta_fallbacks"] == 0
        want3 = cp.snapshot("host3")["version"]
        wait_for(lambda: h3.ready()["snapshot_version"] == want3, 3, "host3 takes its snapshot without b")
        assert h3.ready()["listeners"] == [f"admin {h3.admin}"]
        for addr in (h3.inbound, h3.outbound):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(split(addr), timeout=2).close()
        wait_for(lambda: next(h for h in cp.status()["hosts"] if h["name"] == "host3")["in_sync"], 3,
                 "host3's ack reaches the control plane")
        assert h2.ready()["control_plane"]["connected"] is True
    finally:
        traffic.stop()
    assert len(traffic.log) > 100


def test_killed_instance_leaves_rotation(topo: Topo) -> None:
    """An app that dies: host3's health check reports it, it leaves every caller's snapshot.

    host3's `connect_refused` between the kill and the report is retried by
    host1 on host2 (nothing reached an app); a request in flight at host3's
    app when it died can still fail there, from host3's inbound. Once host1 has
    its new snapshot, no request fails.
    """
    cp, h1 = topo.cp, topo.h1
    topo.up()
    traffic = Traffic(h1.outbound)
    try:
        wait_for(lambda: traffic.served_by("b3") and traffic.served_by("b2"), 5, "traffic to both")
        assert topo.b3 is not None
        killed = time.monotonic()
        topo.b3.proc.kill()
        gone = wait_for(lambda: "host3" not in b_hosts(cp.snapshot("host1")), HEALTH_INTERVAL_S + 2,
                        "b@host3 leaves host1's snapshot")
        time.sleep(1.0)
        late = traffic.failures(gone + 0.5)  # host1 applies its snapshot within ms of the control plane
        early = traffic.failures(killed)
        print(f"killed instance: out of host1's snapshot {gone - killed:.2f}s after the kill; "
              f"{len(early)} requests failed before that")
        assert late == [], late[:5]
        assert all(f[3].endswith("hop=host3/inbound") for f in early), early[:5]  # connect_refused (or a reset)
        assert traffic.failures() == early
    finally:
        traffic.stop()


def test_control_plane_down_then_proxy_restarts_from_disk(topo: Topo) -> None:
    cp, h1 = topo.cp, topo.h1
    topo.up()
    traffic = Traffic(h1.outbound)
    try:
        wait_for(lambda: traffic.served_by("b3") and traffic.served_by("b2"), 5, "traffic to both")
        version = h1.ready()["snapshot_version"]
        cut = time.monotonic()
        cp.kill()
        half = cut + OUTAGE_S / 2
        time.sleep(max(0.0, half - time.monotonic()))
        mid = h1.ready()  # halfway: already counting, and counting from the kill (not from the last poll)
        assert mid["control_plane"]["connected"] is False and OUTAGE_S / 2 - 1 < mid["snapshot_age_s"] < OUTAGE_S / 2 + 2
        time.sleep(max(0.0, cut + OUTAGE_S + 0.5 - time.monotonic()))  # the outage, under steady traffic
        outage = [x for x in traffic.log if x[0] >= cut]
        assert traffic.failures() == [], traffic.failures()[:5]
        assert len(outage) > 100 * OUTAGE_S, len(outage)  # ~200/s, counted, not sampled
        # Both instances still serve in the outage's second half: neither left the table. (Not "in its last
        # 5 s": P2C may avoid one for seconds after a slow answer; stages/endpoint.py decayed() bounds how long.)
        assert traffic.served_by("b2", half) and traffic.served_by("b3", half)
        doc = h1.ready()
        cpd = doc["control_plane"]
        assert cpd["connected"] is False and cpd["last_error"] and doc["snapshot_version"] == version
        assert OUTAGE_S <= doc["snapshot_age_s"] < OUTAGE_S + 5, doc
        m = h1.metrics()
        assert metric(m, "glassmesh_control_plane_connected") == 0
        assert metric(m, "glassmesh_snapshot_age_seconds") >= OUTAGE_S
        assert f"control plane {cp.url} unreachable" in h1.proxy.log_text()  # type: ignore[union-attr]
        print(f"control plane down {time.monotonic() - cut:.1f}s: {len(outage)} requests, 0 failed; "
              f"host1 snapshot age {doc['snapshot_age_s']:.1f}s")

        # host1's proxy restarted while the control plane is down: it serves from DIR/snapshot.json.
        traffic.stop()
        n = len(traffic.log)
        h1.stop()
        h1.start(cp.url)
        doc = h1.wait_ready(10)
        assert doc["snapshot_source"] == "disk" and doc["snapshot_version"] == version
        assert doc["control_plane"]["connected"] is False and doc["snapshot_age_s"] >= OUTAGE_S
        traffic = Traffic(h1.outbound)
        wait_for(lambda: traffic.served_by("b2") and traffic.served_by("b3"), 5, "traffic from disk")
        assert "serving last-known-good snapshot version" in h1.proxy.log_text()  # type: ignore[union-attr]

        # The control plane comes back (its instance leases expired meanwhile: the guard holds b
        # until the proxies report again); the proxies reconnect and nothing fails.
        cp.start()
        wait_for(lambda: h1.ready()["control_plane"]["connected"], 10, "host1 reconnects")
        assert h1.ready()["snapshot_age_s"] == 0
        time.sleep(2 * HEALTH_INTERVAL_S)
        assert b_hosts(cp.snapshot("host1")) == ["host2", "host3"]
        assert traffic.failures() == [], traffic.failures()[:5]
        assert n > 100 * OUTAGE_S
        assert_same_snapshot(h1, cp)
    finally:
        traffic.stop()


# --------------------------------------------------------------------------- a fake control plane


class FakeControl:
    """A tiny aiohttp control plane in a thread: serves scripted documents, records acks and reports."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.docs: list[tuple[int, bytes]] = []  # (version, body): served in order to after=N polls
        self.acks: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10)

    def push(self, version: int, doc: dict[str, Any] | bytes) -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        with self._lock:
            self.docs.append((version, body))

    def ack_for(self, version: int, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for a in self.acks:
                    if a["version"] == version:
                        return a
            time.sleep(0.02)
        raise AssertionError(f"no ack for version {version}; acks: {self.acks}")

    async def _snapshot(self, request: web.Request) -> web.Response:
        after = int(request.query["after"])
        deadline = time.monotonic() + min(2.0, float(request.query.get("wait", "30")))
        while time.monotonic() < deadline:
            with self._lock:
                nxt = next(((v, b) for v, b in self.docs if v > after), None)
            if nxt is not None:
                return web.Response(body=nxt[1], content_type="application/json",
                                    headers={"glassmesh-snapshot-version": str(nxt[0])})
            await asyncio.sleep(0.02)
        return web.Response(status=204, headers={"glassmesh-snapshot-version": str(after)})

    async def _ack(self, request: web.Request) -> web.Response:
        with self._lock:
            self.acks.append(await request.json())
        return web.json_response({"ok": True})

    async def _instances(self, request: web.Request) -> web.Response:
        with self._lock:
            self.reports.append(await request.json())
        return web.json_response({"ok": True})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/hosts/{host}/snapshot", self._snapshot)
        app.router.add_post("/v1/hosts/{host}/ack", self._ack)
        app.router.add_post("/v1/hosts/{host}/instances", self._instances)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def down() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_bad_snapshots_are_rejected_with_the_reason_and_the_old_one_serves(mesh: Mesh) -> None:
    """One host calling itself: a's outbound -> its own inbound (b) -> the b app. Then bad documents."""
    fake = FakeControl()
    try:
        h = CHost(mesh, "host1", ["a", "b"])
        app = mesh.start_app("http", f"{h.ip}:{APP_PORT}", "b1")
        good: dict[str, Any] = {
            "version": 1, "host": "host1", "trust_domain": "glassmesh.local", "trust_bundle": "certs/ca.pem",
            "inbound": h.inbound, "admin": h.admin,
            "local_services": [
                {"name": "a", "outbound": h.outbound, "cert": "certs/a.pem", "key": "certs/a.key"},
                {"name": "b", "instances": [app.addr], "outbound": f"{h.ip}:4141", "cert": "certs/b.pem",
                 "key": "certs/b.key", "health_interval_ms": 200},
            ],
            "services": [{"name": "b", "endpoints": [{"address": h.inbound, "host": "host1"}]}],
        }
        fake.push(1, good)
        h.start(fake.url)
        h.wait_ready()
        assert fake.ack_for(1) == {"version": 1, "accepted": True, "reason": "", "hot_path": BUILD}
        r = get(h.outbound, "/x", headers={"Host": "b"})
        assert r.status == 200 and r.header("x-app") == "b1"
        # host1 registers its b instance, checked every 200 ms, with a TTL of three intervals.
        wait_for(lambda: any(rep["instances"] for rep in fake.reports), 3, "a health report")
        rep = next(rep for rep in fake.reports if rep["instances"])
        assert rep["instances"] == [{"service": "b", "address": app.addr, "healthy": True,
                                     "detail": "tcp connect ok"}]
        assert rep["ttl_s"] == 1.0  # 3 x 200 ms, raised to the control plane's minimum of 1 s

        bad_cases: list[tuple[int, dict[str, Any] | bytes, str]] = [
            (2, b'{"version": 2, "host": "host1", ', "not valid JSON"),
            (3, {**good, "version": 3, "requires": ["teleport"]}, "requires feature teleport"),
            (4, {**good, "version": 4, "local_services": [
                {**good["local_services"][0], "cert": "certs/missing.pem"}, good["local_services"][1]]},
             "missing.pem"),
            (5, {**good, "version": 5, "local_services": [  # a port another process holds (below)
                {**good["local_services"][0], "outbound": f"{h.ip}:4150"}, good["local_services"][1]]},
             f"cannot listen on {h.ip}:4150: Address already in use"),
            (6, {**good, "version": 6, "host": "host9"}, "snapshot is for host 'host9'"),
        ]
        taken = socket.create_server((h.ip, 4150))
        for version, doc, why in bad_cases:
            fake.push(version, doc)
            ack = fake.ack_for(version)
            assert ack["accepted"] is False and why in ack["reason"], (version, ack)
            r = get(h.outbound, "/x", headers={"Host": "b"})
            assert r.status == 200 and r.header("x-app") == "b1"
        taken.close()
        doc = h.ready()
        assert doc["snapshot_version"] == 1 and doc["control_plane"]["last_reject"]["version"] == 6
        assert doc["pending_retry"] is None  # 5 was held for a retry (a port is local); 6 replaced it
        assert json.loads((h.data / "snapshot.json").read_text())["version"] == 1

        # A snapshot that empties b (not drained) is taken with b's old endpoints, and says so.
        fake.push(7, {**good, "version": 7, "services": [{"name": "b", "endpoints": []}]})
        ack = fake.ack_for(7)
        assert ack["accepted"] is True and "removes every endpoint of 'b', which is not drained" in ack["reason"]
        assert get(h.outbound, "/x", headers={"Host": "b"}).status == 200
        assert json.loads((h.data / "snapshot.json").read_text())["services"][0]["endpoints"]
        # Drained on purpose: emptied.
        fake.push(8, {**good, "version": 8, "services": [{"name": "b", "endpoints": [], "drained": True}]})
        assert fake.ack_for(8) == {"version": 8, "accepted": True, "reason": "", "hot_path": BUILD}
        r = get(h.outbound, "/x", headers={"Host": "b"})
        assert r.status == 503 and (r.header("glassmesh-error") or "").startswith("no_endpoints")
    finally:
        fake.close()


def test_workers_watch_through_the_supervisor(topo: Topo) -> None:
    """With --workers 2 the supervisor watches, writes DIR/snapshot.json and SIGHUPs the workers."""
    cp, h1 = topo.cp, topo.h1
    topo.up(h1_args=["--workers", "2"])
    want = cp.snapshot("host1")["version"]
    wait_for(lambda: all(w["snapshot_version"] == want for w in h1.ready()["workers"]), 3, "workers reloaded")
    doc = h1.ready()
    assert doc["control_plane"]["connected"] is True and doc["snapshot_version"] == want
    seen = set()
    for _ in range(40):
        r = get(h1.outbound, "/x", headers={"Host": "b"})
        assert r.status == 200
        seen.add(r.header("x-app"))
    assert seen == {"b2", "b3"}
    assert metric(h1.metrics(), "glassmesh_control_plane_connected") == 1


def test_usage_errors(tmp_path: Path) -> None:
    import subprocess

    r = subprocess.run([*PROXY_CMD, "--control", "http://127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--control needs --host NAME and --data DIR" in r.stderr
    r = subprocess.run([*PROXY_CMD], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "give --config FILE, or --control URL --host NAME --data DIR" in r.stderr


def test_health_probes_against_a_real_app(mesh: Mesh) -> None:
    from glassmesh.proxy.health import probe

    app = mesh.start_app("http", f"{fresh_ip()}:{APP_PORT}", "hc")
    dead = f"{fresh_ip()}:{APP_PORT}"

    async def run() -> list[tuple[bool, bool, str]]:
        return list(await asyncio.gather(
            probe(app.addr, None, 1.0, "b"), probe(app.addr, "/status/204", 1.0, "b"),
            probe(app.addr, "/status/503", 1.0, "b"), probe(dead, None, 1.0, "b"), probe(dead, "/x", 1.0, "b")))

    assert asyncio.run(run()) == [
        (True, True, "tcp connect ok"), (True, True, "GET /status/204: 204"),
        (False, True, "GET /status/503: status 503"), (False, True, "connect refused"),
        (False, True, "connect refused")]
