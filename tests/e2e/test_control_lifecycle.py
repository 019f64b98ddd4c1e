"""A proxy under a real control plane over its life: flags at start-up, rejected snapshots, listeners.

Real processes throughout: `glassmesh control`, `glassmesh proxy --control`
(with one worker and with --workers 2), the echo apps of apps.py. What is
checked is what a user sees: access-log lines, error bodies, kept-alive
connections, ports that open and close as mesh.yaml changes, the acks in
`glassmesh status`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from tests.e2e.harness import HttpConn, Mesh, fresh_ip, get, mesh_error, split, wait_port
from tests.e2e.operator import cli_env
from tests.e2e.test_control_watch import APP_PORT, CLI, CHost, Control, wait_for
from tests.e2e.test_listeners import refused

MESH = """\
services:
  - name: a
  - name: b
    port: {port}
{extra}hosts:
  - {{name: host1, address: "{ip1}:4143", services: [{h1}]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
"""


class Pair:
    """host1 runs a (a caller; c too when asked), host2 runs b with its app; one control plane."""

    def __init__(self, mesh: Mesh, h1_services: list[str] | None = None) -> None:
        self.mesh = mesh
        self.cp = Control(mesh)
        self.h1 = CHost(mesh, "host1", h1_services or ["a", "c"])
        self.h2 = CHost(mesh, "host2", ["b"])
        self.b = mesh.start_app("http", f"{self.h2.ip}:{APP_PORT}", "b2")

    def yaml(self, h1: tuple[str, ...] = ("a",)) -> str:
        extra = "".join(f"  - name: {s}\n" for s in h1 if s != "a")
        return MESH.format(port=APP_PORT, ip1=self.h1.ip, ip2=self.h2.ip, h1=", ".join(h1), extra=extra)

    def up(self, h1_args: list[str], h1: tuple[str, ...] = ("a",)) -> None:
        self.cp.start()
        self.cp.apply(self.yaml(h1))
        self.h2.start(self.cp.url)
        self.h1.start(self.cp.url, h1_args)
        self.h2.wait_ready()
        self.h1.wait_ready()
        self.wait_b(self.h1.outbound)

    def wait_b(self, outbound: str, timeout: float = 10) -> None:
        """Until b@host2 is registered (its health check) and reachable through `outbound`."""
        def ok() -> bool:
            try:
                return get(outbound, "/x", headers={"Host": "b"}, timeout=2).status == 200
            except (OSError, EOFError, ValueError):  # not up yet; or (the issue) a mesh error with no reply
                return False

        wait_for(ok, timeout, f"b answers through {outbound}")

    def host_status(self, name: str) -> dict[str, Any]:
        """The host's row in `glassmesh status --json` (empty until the control plane has compiled for it)."""
        return next((h for h in self.cp.status()["hosts"] if h["name"] == name),
                    {"running": 0, "last_reject": None, "in_sync": False})


@pytest.fixture
def pair(mesh: Mesh) -> Pair:
    return Pair(mesh)


def workers_args(workers: int) -> list[str]:
    return ["--workers", str(workers)] if workers > 1 else []


# --------------------------------------------------------------------------- point 1: --access-log


@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_under_a_control_plane(pair: Pair, workers: int) -> None:
    """The issue: with --control and one worker, --access-log emptied every mesh error and reset connections."""
    log = pair.mesh.root / "host1-access.log"
    keylog = pair.mesh.root / "host1-keys.log"
    pair.up(["--access-log", str(log), "--tls-keylog", str(keylog), *workers_args(workers)])
    n = 60
    with HttpConn(pair.h1.outbound) as c:  # one connection throughout: keep-alive must survive every answer
        for i in range(n):
            if i % 3 == 2:
                r = c.request("GET", "/missing", {"Host": "nosuch"})
                assert r.status == 404 and mesh_error(r) == ("unknown_service", "host1/outbound"), r
                body = json.loads(r.body)
                assert body["error"] == "unknown_service" and body["service"] == "nosuch", body
            elif i % 3 == 1:
                r = c.request("POST", f"/post/{i}", {"Host": "b"}, body=b"x" * 1000)
                assert r.status == 200 and r.json()["body_length"] == 1000, r
            else:
                r = c.request("GET", f"/get/{i}", {"Host": "b"})
                assert r.status == 200 and r.header("x-app") == "b2", r
            assert (r.header("connection") or "").lower() != "close", r
        assert not c.closed_by_peer(0.3)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    wait_for(lambda: len([x for x in lines() if x["source"] == "a"]) >= n, 5, f"{n} access-log lines")
    ours = [x for x in lines() if x["source"] == "a"]
    errors = [x for x in ours if x["destination"] == "nosuch"]
    assert len(errors) == n // 3 and all(x["status"] == 404 and x["mesh_error"] == "unknown_service"
                                         for x in errors), errors[:3]
    posts = [x for x in ours if x["method"] == "POST"]
    assert len(posts) == n // 3 and all(x["status"] == 200 and x["destination"] == "b" for x in posts)
    assert all(x["host"] == "host1" and x["side"] == "outbound" for x in ours)
    assert "CLIENT_TRAFFIC_SECRET_0" in keylog.read_text()  # --tls-keylog too: host1's TLS to host2
    # A WebSocket through the same proxy: upgraded, echoed both ways, logged.
    with HttpConn(pair.h1.outbound) as c:
        r = c.request("GET", "/ws", {"Host": "b", "Connection": "Upgrade", "Upgrade": "websocket",
                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"})
        assert r.status == 101, r
        for i in range(5):
            msg = b"frame %d" % i
            c.send(msg)
            assert c.recv_exact(len(msg)) == msg
    wait_for(lambda: any(x["path"] == "/ws" and x["status"] == 101 for x in lines()), 5, "the upgrade is logged")
    # The request path logs through the batched writer, not a plain file: nothing about that in the log.
    assert "Traceback" not in pair.h1.proxy.log_text() and "AttributeError" not in pair.h1.proxy.log_text()  # type: ignore[union-attr]


NGINX_CONF = """\
worker_processes 1;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp_b; proxy_temp_path {d}/tmp_p; fastcgi_temp_path {d}/tmp_f;
  uwsgi_temp_path {d}/tmp_u; scgi_temp_path {d}/tmp_s;
  upstream mesh {{ server {outbound}; keepalive 8; }}
  server {{
    listen {listen};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /api/ {{ proxy_pass http://mesh; proxy_set_header Host b; }}
    location /gone/ {{ proxy_pass http://mesh; proxy_set_header Host nosuch; }}
  }}
}}
"""


def test_nginx_in_front_of_a_controlled_proxy_with_an_access_log(pair: Pair) -> None:
    """The issue's set-up: nginx (keep-alive upstream) -> host1's outbound, POST load, --access-log, one worker."""
    log = pair.mesh.root / "host1-access.log"
    pair.up(["--access-log", str(log)])
    d = pair.mesh.root / "nginx"
    d.mkdir()
    listen = f"{fresh_ip()}:8088"
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, outbound=pair.h1.outbound, listen=listen))
    ngx = pair.mesh.spawn("nginx", ["nginx", "-p", f"{d}/", "-e", f"{d}/stderr.log", "-c", str(conf),
                                    "-g", "daemon off;"])
    wait_port(listen, ngx)
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def count(key: int) -> None:
        with lock:
            statuses[key] = statuses.get(key, 0) + 1

    def client(k: int) -> None:
        """100 POSTs on one kept-alive connection to nginx; a status counts negative when its body is wrong."""
        c = HttpConn(listen)
        for i in range(100):
            gone = i % 10 == 9
            try:
                r = c.request("POST", f"/{'gone' if gone else 'api'}/{k}/{i}", {"Host": "front"}, body=b"p" * 2000)
            except (OSError, EOFError, ValueError):
                count(0)  # nginx closed the connection: a new one
                c.close()
                c = HttpConn(listen)
                continue
            try:
                ok = (json.loads(r.body)["error"] == "unknown_service" if gone else r.json()["body_length"] == 2000)
            except (ValueError, KeyError):
                ok = False
            count(r.status if ok else -r.status)
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == {200: 360, 404: 40}, statuses  # no 502, every mesh error with its JSON body
    wait_for(lambda: log.exists() and len([x for x in log.read_text().splitlines() if '"source":"a"' in x]) >= 400,
             5, "400 access-log lines")


# --------------------------------------------------------------------------- point 5: listeners follow mesh.yaml


def in_step(p: Pair, h: CHost, services: tuple[str, ...] | None = None) -> int:
    """Wait until host `h` runs the latest snapshot compiled for it (and the control plane knows); its version.

    `services`: first wait until the control plane has compiled one with these local services.
    """
    if services is not None:
        wait_for(lambda: sorted(ls["name"] for ls in p.cp.snapshot(h.name)["local_services"]) == sorted(services),
                 10, f"the control plane compiles {services} for {h.name}")
    want = p.cp.snapshot(h.name)["version"]
    wait_for(lambda: h.ready()["snapshot_version"] == want, 10, f"{h.name} runs version {want}")
    wait_for(lambda: p.host_status(h.name)["running"] == want, 5, f"{h.name}'s ack of version {want}")
    return int(want)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_service_added_and_removed_opens_and_closes_its_listener(pair: Pair, workers: int) -> None:
    """The issue: adding a service to a running host needed a restart, and the restart came back stuck."""
    h1 = pair.h1
    pair.up(workers_args(workers))
    c_out = f"{h1.ip}:4141"  # c comes second in host1's services: the next outbound port
    assert refused(c_out)

    pair.cp.apply(pair.yaml(("a", "c")))
    in_step(pair, h1, ("a", "c"))
    r = get(c_out, "/via-c", headers={"Host": "b"})
    assert r.status == 200 and r.header("x-app") == "b2", r
    assert f"c outbound {c_out}" in h1.ready()["listeners"]
    if workers > 1:  # every worker serves it: connections spread over both
        assert all(f"c outbound {c_out}" in w["listeners"] for w in h1.ready()["workers"])

    # A request in flight on c's port (its body not all sent yet) and an idle kept-alive connection.
    busy = HttpConn(c_out)
    idle = HttpConn(c_out)
    try:
        assert idle.request("GET", "/idle", {"Host": "b"}).status == 200
        busy.send_request("POST", "/in-flight", {"Host": "b", "Content-Length": "10"})
        busy.send(b"12345")
        time.sleep(0.3)

        pair.cp.apply(pair.yaml(("a",)))
        in_step(pair, h1, ("a",))
        wait_for(lambda: refused(c_out), 5, f"{c_out} closed")
        assert idle.closed_by_peer(5)  # an idle connection of a removed listener is closed at once
        busy.send(b"67890")
        r = busy.read_final("POST")
        assert r.status == 200 and r.json()["body_length"] == 10, r  # the request in flight finishes
        assert (r.header("connection") or "").lower() == "close"
        assert busy.closed_by_peer(5)
    finally:
        busy.close()
        idle.close()
    assert f"c outbound {c_out}" not in h1.ready()["listeners"]
    assert get(h1.outbound, "/still", headers={"Host": "b"}).status == 200  # a's port never moved
    assert "listeners added: c outbound" in h1.proxy.log_text()  # type: ignore[union-attr]
    assert "listeners removed: c outbound" in h1.proxy.log_text()  # type: ignore[union-attr]


def test_a_port_taken_rejects_changes_nothing_and_is_retried_once_free(pair: Pair) -> None:
    h1 = pair.h1
    pair.up([])
    before = h1.ready()["snapshot_version"]
    c_out = f"{h1.ip}:4141"
    squatter = socket.create_server(split(c_out))  # another process on the port c's listener will want
    try:
        pair.cp.apply(pair.yaml(("a", "c")))
        rej = wait_for(lambda: pair.host_status("host1")["last_reject"], 10, "host1 rejects")
        assert rej
        reason = pair.host_status("host1")["last_reject"]["reason"]
        assert f"cannot listen on {c_out}: Address already in use" in reason and "retrying" in reason, reason
        doc = h1.ready()
        assert doc["snapshot_version"] == before and f"c outbound {c_out}" not in doc["listeners"]
        assert doc["pending_retry"]["version"] == pair.cp.snapshot("host1")["version"]
        assert get(h1.outbound, "/x", headers={"Host": "b"}).status == 200  # nothing changed
        time.sleep(1.5)  # a retry or two, still refused
        assert h1.ready()["pending_retry"]["attempts"] >= 1
    finally:
        squatter.close()
    # Freed: the next try takes it, without any change to mesh.yaml.
    in_step(pair, h1, ("a", "c"))
    assert h1.ready()["pending_retry"] is None
    assert get(c_out, "/x", headers={"Host": "b"}).status == 200
    assert "applied on retry" in h1.proxy.log_text()  # type: ignore[union-attr]


def test_a_restart_from_an_older_lkg_serves_at_once_then_takes_the_newer_listeners(pair: Pair) -> None:
    h1 = pair.h1
    pair.up([])
    old = h1.ready()["snapshot_version"]
    h1.stop()
    pair.cp.apply(pair.yaml(("a", "c")))  # meanwhile: a new service on host1
    h1.start(pair.cp.url)
    h1.wait_ready()
    assert "serving last-known-good snapshot version" in h1.proxy.log_text()  # type: ignore[union-attr]
    in_step(pair, h1, ("a", "c"))
    assert h1.ready()["snapshot_version"] > old
    assert get(f"{h1.ip}:4141", "/x", headers={"Host": "b"}).status == 200


# --------------------------------------------------------------------------- point 4: local rejects are retried


def status_text(p: Pair) -> str:
    r = subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=30,
                       env={**cli_env(p.cp.api_url, p.cp.cred), "COLUMNS": "400"})  # one row per host, not wrapped
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_first_snapshot_rejected_for_a_missing_ca_is_taken_once_the_file_is_there(pair: Pair) -> None:
    """The issue: host1 stayed on its rejected first snapshot, unbound, until an unrelated change came."""
    h1 = pair.h1
    ca = h1.data / "certs" / "ca.pem"
    ca.unlink()
    pair.cp.start()
    pair.cp.apply(pair.yaml())
    pair.h2.start(pair.cp.url)
    h1.start(pair.cp.url)
    wait_for(lambda: (pair.host_status("host1")["last_reject"] or {}).get("reason"), 10, "host1 rejects")
    reason = pair.host_status("host1")["last_reject"]["reason"]
    assert "ca.pem" in reason and "retrying" in reason, reason
    assert "host1" in status_text(pair) and "ca.pem" in status_text(pair)
    time.sleep(2)
    assert refused(h1.admin)  # no listener bound on a snapshot it cannot use
    log = h1.proxy.log_text()  # type: ignore[union-attr]
    assert "still cannot be applied" in log, log

    shutil.copy(pair.mesh.ca_pem, ca)  # the fix: nothing changes in mesh.yaml
    copied = time.monotonic()
    h1.wait_ready(15)
    took = time.monotonic() - copied
    assert took < 10, took
    version = in_step(pair, h1, ("a",))
    st = pair.host_status("host1")
    assert st["running"] == version and st["in_sync"], st
    row = next(x.split() for x in status_text(pair).splitlines() if x.split()[:1] == ["host1"])
    assert row[1:3] == [str(version), str(version)], row  # running = latest
    pair.wait_b(h1.outbound)
    assert "applied on retry" in h1.proxy.log_text()  # type: ignore[union-attr]
    print(f"ca.pem copied in: host1 serving {took:.1f}s later")


def test_a_later_snapshot_rejected_for_a_missing_certificate_is_retried(pair: Pair) -> None:
    """A new service on a running host whose certificate is not there yet: taken once the files are copied in."""
    h1 = pair.h1
    pem, key = h1.data / "certs" / "c.pem", h1.data / "certs" / "c.key"
    hidden = pair.mesh.root / "c-cert"
    hidden.mkdir()
    shutil.move(pem, hidden / "c.pem")
    shutil.move(key, hidden / "c.key")
    pair.up([])
    pair.cp.apply(pair.yaml(("a", "c")))
    wait_for(lambda: h1.ready()["pending_retry"], 10, "host1 holds the snapshot for a retry")
    assert "c.pem" in h1.ready()["pending_retry"]["reason"]
    assert refused(f"{h1.ip}:4141")
    shutil.move(hidden / "c.pem", pem)
    shutil.move(hidden / "c.key", key)
    version = in_step(pair, h1, ("a", "c"))
    assert get(f"{h1.ip}:4141", "/x", headers={"Host": "b"}).status == 200
    # /ready still names the reject, as history: the proxy runs that version now.
    r = h1.ready()["control_plane"]["last_reject"]
    assert r["past"] is True and r["running"] >= r["version"] and r["running"] <= version, r
