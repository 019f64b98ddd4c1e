"""Two control-plane replicas on a real 3-member etcd cluster, proxies failing over between them.

Real processes throughout: three etcd members (tests/etcd_cluster.py), two
`glassmesh control --store etcd://...` replicas with their own data dirs,
three proxies started with `--control R1,R2` in different orders (host1
prefers replica 2, host2 and host3 replica 1), the echo apps, and a steady
client calling b as service a through host1's outbound. What it proves is
the issue's etcd bullet:

- a change applied through replica 1 reaches host1, which watches replica 2,
  within 2 s (the replicas share nothing but etcd);
- SIGKILLing replica 1 and the etcd leader under traffic fails no request,
  the proxies on replica 1 move to replica 2, and a change applied after the
  kills reaches every proxy and sits in `glassmesh history` with every
  version before it (asked through GLASSMESH_CONTROL=R1,R2, R1 being dead).

Each change adds a service that every host's snapshot lists (no caller
restricts `calls:`), so every proxy accepts it without a listener moving,
and "reached" is read from the proxy's own last-known-good file.

Two smaller tests: a replica that is up but answers 503 is left for the
next one at once, and `--control` refuses URLs of mixed schemes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from glassmesh.buildinfo import hot_path_doc
from tests.e2e.harness import PROXY_CMD, Mesh, Proc, wait_port
from tests.e2e.operator import api, cli_env
from tests.e2e.test_control_watch import (
    APP_PORT,
    HEALTH_INTERVAL_S,
    CHost,
    FakeControl,
    Traffic,
    b_hosts,
    free_port,
    http_json,
    wait_for,
)
from tests.etcd_cluster import ETCD_PASSPHRASE_ENV, EtcdCluster

BUILD = hot_path_doc()["build"]  # what this tree's proxies say in their acks

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
TRAFFIC_RATE = 100.0  # requests/s through host1's outbound
TRAFFIC_CAP_S = 40.0  # the client stops on its own after this, whatever happens to the test

MESH = """\
services:
  - name: a
  - name: b
    port: {port}
    # Round robin: the test checks that both instances serve in a few seconds of one-at-a-time requests,
    # which P2C (the default) does not promise: it sends them all to the faster one while it stays faster.
    balance: round_robin
{extra}hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
  - {{name: host3, address: "{ip3}:4143", services: [b]}}
"""


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    """This module's own cluster (the test kills its leader, and restarts it before it ends)."""
    with EtcdCluster.started() as cluster:
        yield cluster


class Replica:
    """One `glassmesh control --store etcd://...` process, with its own data dir (and a copy of the shared CA)."""

    def __init__(self, mesh: Mesh, name: str, store: str) -> None:
        self.mesh, self.name, self.store = mesh, name, store
        self.port = free_port(count=2)  # P (API) and P+1 (the proxies' mTLS listener)
        self.iport = free_port()
        self.url = f"http://127.0.0.1:{self.iport}"  # what proxies without a join are given (insecure, loopback)
        self.api_url = f"https://127.0.0.1:{self.port}"
        self.data = mesh.root / f"control-{name}"
        self.cred = self.data / "admin.pem"
        self.proc: Proc | None = None

    def start(self) -> None:
        self.proc = self.mesh.spawn(f"control {self.name}", [
            *CLI, "control", "--store", self.store, "--data", str(self.data),
            "--listen", f"127.0.0.1:{self.port}", "--proxy-listen", f"127.0.0.1:{self.port + 1}",
            "--insecure-proxy-listen", f"127.0.0.1:{self.iport}"],
            env=ETCD_PASSPHRASE_ENV)
        wait_port(f"127.0.0.1:{self.port}", self.proc, timeout=20)
        wait_port(f"127.0.0.1:{self.iport}", self.proc, timeout=20)

    def kill(self) -> None:
        """SIGKILL by PID: no goodbye to etcd, its replica record expires on its own."""
        assert self.proc is not None and self.proc.alive()
        self.proc.kill()

    def apply(self, text: str, timeout: float = 15.0) -> dict[str, Any]:
        """Apply through this replica, retrying while its store answers 503 (an etcd election)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status, out = api(self.api_url, "POST", "/v1/apply", {"yaml": text}, self.cred)
                if status == 200:
                    assert out is not None and out["committed"], out
                    return out  # type: ignore[no-any-return]
                if status < 500 or time.monotonic() > deadline:
                    raise AssertionError(f"apply through {self.name}: HTTP {status}: {str(out)[:500]}")
                time.sleep(0.1)
            except OSError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"apply through {self.name} failed: {e}") from None
                time.sleep(0.1)

    def snapshot(self, host: str) -> dict[str, Any]:
        return http_json(f"{self.url}/v1/hosts/{host}/snapshot?after=0&wait=0")  # type: ignore[no-any-return]


class HaHost(CHost):
    """A proxy under the replicas: CHost's certificate files, given the replicas in order of preference."""

    def start_on(self, urls: list[str]) -> Proc:
        return self.start(",".join(urls))

    def on(self, url: str) -> bool:
        """Connected to the replica at `url` (what /ready says)."""
        cp = self.ready()["control_plane"]
        return bool(cp["connected"] and cp["url"] == url)

    def has_service(self, name: str) -> bool:
        """The snapshot this proxy accepted last (its last-known-good file) lists `name`."""
        try:
            doc = json.loads((self.data / "snapshot.json").read_text())
        except (OSError, ValueError):
            return False
        return any(s["name"] == name for s in doc["services"])


class BoundedTraffic(Traffic):
    """Traffic that also stops by itself after `max_s` or `max_requests`, so a stuck test cannot flood."""

    def __init__(self, outbound: str, rate: float, max_s: float, max_requests: int) -> None:
        self.max_s, self.max_requests, self.began = max_s, max_requests, time.monotonic()
        super().__init__(outbound, rate)

    def _run(self) -> None:
        stop = self._stop
        timer = threading.Timer(self.max_s, stop.set)
        timer.daemon = True
        timer.start()
        watch = threading.Thread(target=self._cap, daemon=True)
        watch.start()
        try:
            super()._run()
        finally:
            timer.cancel()

    def _cap(self) -> None:
        while not self._stop.is_set():
            if len(self.log) >= self.max_requests:
                self._stop.set()
            self._stop.wait(0.05)


def history(urls: list[str], cred: Path) -> list[dict[str, str]]:
    """`glassmesh history` through GLASSMESH_CONTROL=URL1,URL2, as rows of its table."""
    env = cli_env(",".join(urls), cred)
    r = subprocess.run([*CLI, "history", "--limit", "50"], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    rows = []
    for line in r.stdout.splitlines()[1:]:
        parts = line.split()
        if parts and parts[0].isdigit():
            rows.append({"version": parts[0], "author": parts[2], "sha256": parts[3]})  # when (UTC): one word
    return rows


def test_two_replicas_on_etcd_fail_over_without_losing_a_request_or_a_change(mesh: Mesh, etcd: EtcdCluster) -> None:
    t_start = time.monotonic()
    r1, r2 = Replica(mesh, "r1", etcd.url), Replica(mesh, "r2", etcd.url)
    h1, h2, h3 = HaHost(mesh, "host1", ["a"]), HaHost(mesh, "host2", ["b"]), HaHost(mesh, "host3", ["b"])
    hosts = [h1, h2, h3]

    def yaml(*extra: str) -> str:
        return MESH.format(port=APP_PORT, ip1=h1.ip, ip2=h2.ip, ip3=h3.ip,
                           extra="".join(f"  - name: {e}\n" for e in extra))

    r1.start()
    r2.start()
    mesh.start_app("http", f"{h2.ip}:{APP_PORT}", "b2")
    mesh.start_app("http", f"{h3.ip}:{APP_PORT}", "b3")
    applied = [r1.apply(yaml())]
    h1.start_on([r2.url, r1.url])  # host1 prefers replica 2
    h2.start_on([r1.url, r2.url])
    h3.start_on([r1.url, r2.url])
    for h in hosts:
        h.wait_ready()
    wait_for(lambda: h1.on(r2.url) and h2.on(r1.url) and h3.on(r1.url), 5, "each proxy on its first replica")
    wait_for(lambda: b_hosts(r2.snapshot("host1")) == ["host2", "host3"], 3 * HEALTH_INTERVAL_S + 2,
             "both b instances registered")

    killed: list[int] = []
    traffic = BoundedTraffic(h1.outbound, TRAFFIC_RATE, TRAFFIC_CAP_S, int(TRAFFIC_RATE * TRAFFIC_CAP_S))
    try:
        wait_for(lambda: traffic.served_by("b2") and traffic.served_by("b3"), 5, "traffic to both b instances")

        # (a) A change applied through replica 1 reaches host1, which watches replica 2.
        t0 = time.monotonic()
        applied.append(r1.apply(yaml("extra1")))
        reached = wait_for(lambda: h1.has_service("extra1"), 2, "a change through replica 1 reaches host1")
        print(f"change through replica 1 reached host1 (on replica 2) in {reached - t0:.3f}s")
        wait_for(lambda: h2.has_service("extra1") and h3.has_service("extra1"), 2, "and host2, host3")
        assert h1.on(r2.url)

        # (b) Replica 1 and the etcd leader die under traffic.
        leader = etcd.leader_index()
        assert leader is not None
        cut = time.monotonic()
        r1.kill()
        etcd.kill(leader)
        killed.append(leader)
        moved = wait_for(lambda: h2.on(r2.url) and h3.on(r2.url), 10, "host2 and host3 move to replica 2")
        print(f"host2 and host3 on replica 2 {moved - cut:.2f}s after the kills")
        for h in (h2, h3):
            cp = h.ready()["control_plane"]
            assert cp["replicas"] == [r1.url, r2.url] and cp["failovers"] >= 1, cp
            assert f"control plane {r1.url} failed" in h.proxy.log_text()  # type: ignore[union-attr]
        assert h1.on(r2.url) and h1.ready()["control_plane"]["failovers"] == 0
        time.sleep(1.5)  # traffic goes on with one replica and two etcd members (a new leader elected)

        # A change after the kills, through the surviving replica, reaches every proxy.
        t1 = time.monotonic()
        applied.append(r2.apply(yaml("extra1", "extra2")))
        wait_for(lambda: all(h.has_service("extra2") for h in hosts), 5, "the change after the kills everywhere")
        print(f"change after the kills reached every proxy in {time.monotonic() - t1:.3f}s")
        time.sleep(1.0)  # traffic keeps flowing on the new configuration
        assert traffic.failures() == [], traffic.failures()[:5]
        assert traffic.served_by("b2", cut) and traffic.served_by("b3", cut)
    finally:
        traffic.stop()
        for i in killed:  # the fixture is module scoped: leave all three members running
            etcd.restart(i)
    after_kills = [x for x in traffic.log if x[0] >= cut]
    assert len(traffic.log) > 150 and len(after_kills) > 100, (len(traffic.log), len(after_kills))
    print(f"{len(traffic.log)} requests, 0 failed")

    # No config change lost: every version applied, before and after the kills, is in the history,
    # asked through both replicas in order (replica 1 is dead: the CLI moves on to replica 2).
    rows = history([r1.api_url, r2.api_url], r2.cred)
    got = {row["version"]: row["sha256"] for row in rows}
    for a in applied:
        assert got.get(str(a["version"])) == a["sha256"][:12], (a, rows)
    assert [int(a["version"]) for a in applied] == sorted(int(a["version"]) for a in applied)
    assert len(rows) == len(applied), rows

    for h in hosts:
        assert h.proxy is not None and h.proxy.alive()
    print(f"test took {time.monotonic() - t_start:.1f}s")


class Unavailable(FakeControl):
    """A replica that is up but cannot serve (its store is down): every snapshot poll answers 503."""

    async def _snapshot(self, request: web.Request) -> web.Response:
        self.polls = getattr(self, "polls", 0) + 1
        return web.json_response({"error": "store unavailable: etcd unavailable"}, status=503)


def test_a_replica_answering_5xx_is_left_for_the_next(mesh: Mesh) -> None:
    """The proxy's first replica answers 503: it takes its snapshot from the second, and acks and reports there."""
    bad, good = Unavailable(), FakeControl()
    try:
        h = CHost(mesh, "host1", ["a"])
        good.push(1, {
            "version": 1, "host": "host1", "trust_domain": "glassmesh.local", "trust_bundle": "certs/ca.pem",
            "inbound": h.inbound, "admin": h.admin,
            "local_services": [{"name": "a", "outbound": h.outbound, "cert": "certs/a.pem", "key": "certs/a.key"}],
            "services": [],
        })
        h.start(f"{bad.url},{good.url}")
        h.wait_ready()
        assert good.ack_for(1) == {"version": 1, "accepted": True, "reason": "", "hot_path": BUILD}
        wait_for(lambda: h.ready()["control_plane"]["connected"], 5, "connected to the second replica")
        cp = h.ready()["control_plane"]
        assert cp["url"] == good.url and cp["replicas"] == [bad.url, good.url] and cp["failovers"] == 1, cp
        assert getattr(bad, "polls", 0) == 1  # left at once, not retried while the other one answers
        assert f"control plane {bad.url} failed (snapshot watch: HTTP 503" in h.proxy.log_text()  # type: ignore[union-attr]
    finally:
        bad.close()
        good.close()


def test_control_urls_must_share_a_scheme() -> None:
    r = subprocess.run([*PROXY_CMD, "--control", "http://127.0.0.1:1,https://127.0.0.1:2", "--host", "h",
                        "--data", "/nonexistent"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "same scheme" in r.stderr, r.stderr
