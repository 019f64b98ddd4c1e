"""Two control-plane replicas on one etcd share one CA: a joined proxy fails over between them over mTLS.

Real processes throughout: a 3-member etcd cluster (tests/etcd_cluster.py),
two `glassmesh control --store etcd://...` replicas started at the same
moment (each with its own data dir, so each makes a CA of its own and only
the store's create-only write decides which one the mesh uses), the echo
app, and two proxies that join with tokens, nothing put on disk by the test.
What it proves:

- both replicas sign with, and present, one CA: same `/v1/ca`, same DIR/ca,
  and each proxy listener's server certificate chains to it under the name
  the proxies check (control.glassmesh.internal);
- a join token made through replica 1 joins a host through replica 2 (the
  tokens, admissions and certificate records are in etcd, not in a replica),
  and `host add` names both replicas' proxy listeners for --control;
- host1 joins through replica 1 (`--control https://r1,https://r2`), serves
  traffic, and when replica 1 is SIGKILLed it goes on with 0 failed requests,
  moves to replica 2 over mutual TLS (its host certificate and pinned CA are
  good there), and a change applied through replica 2 reaches it.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from glassmesh.ca import spiffe_id_of
from tests.e2e.harness import PROXY_CMD, Mesh, Proc, fresh_ip, get, wait_port
from tests.e2e.operator import cli_env
from tests.e2e.test_control_ha import CLI, BoundedTraffic, Replica
from tests.e2e.test_control_watch import APP_PORT, wait_for
from tests.etcd_cluster import ETCD_PASSPHRASE_ENV, EtcdCluster

CONTROL_DNS = "control.glassmesh.internal"
TRAFFIC_RATE = 100.0
TRAFFIC_CAP_S = 40.0

MESH = """\
services:
  - name: a
  - name: b
    port: {port}
{extra}hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
"""


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster.started() as cluster:
        yield cluster


class JoinedHost:
    """A host whose proxy joins with a token and then watches the replicas over mutual TLS."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        self.mesh, self.name = mesh, name
        self.ip = fresh_ip()
        self.admin, self.outbound = f"{self.ip}:4191", f"{self.ip}:4140"
        self.data = mesh.root / f"{name}-data"
        self.proxy: Proc | None = None

    def join(self, urls: list[str], doc: dict[str, Any]) -> Proc:
        self.proxy = self.mesh.spawn(f"proxy {self.name}", [
            *PROXY_CMD, "--control", ",".join(urls), "--join", doc["token"], "--ca-sha256", doc["ca_sha256"],
            "--data", str(self.data)])
        return self.proxy

    def ready(self) -> dict[str, Any]:
        r = get(self.admin, "/ready", timeout=2)
        assert r.status == 200, r
        return r.json()  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proxy is not None
            if not self.proxy.alive():
                raise RuntimeError(f"proxy {self.name} exited:\n{self.proxy.log_text()}")
            try:
                self.ready()
                return
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"proxy {self.name} not ready:\n{self.proxy.log_text()}") from None
                time.sleep(0.05)

    def on(self, url: str) -> bool:
        cp = self.ready()["control_plane"]
        return bool(cp["connected"] and cp["url"] == url)

    def has_service(self, name: str) -> bool:
        try:
            doc = json.loads((self.data / "snapshot.json").read_text())
        except (OSError, ValueError):
            return False
        return any(s["name"] == name for s in doc["services"])


def host_add(replica: Replica, name: str, services: str) -> dict[str, Any]:
    """`glassmesh host add` through one replica's operator API."""
    r = subprocess.run([*CLI, "host", "add", name, "--services", services, "--json"],
                       env=cli_env(replica.api_url, replica.cred), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def server_cert(port: int, ca_pem: Path) -> x509.Certificate:
    """The proxy listener's certificate, verified as a proxy does: chain to ca_pem, name control.glassmesh.internal."""
    ctx = ssl.create_default_context(cafile=str(ca_pem))  # check_hostname on: the name must match
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=CONTROL_DNS) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_replicas_share_one_ca_and_a_joined_proxy_fails_over_over_mtls(mesh: Mesh, etcd: EtcdCluster) -> None:
    t_start = time.monotonic()
    r1, r2 = Replica(mesh, "r1", etcd.url), Replica(mesh, "r2", etcd.url)
    p1, p2 = f"https://127.0.0.1:{r1.port + 1}", f"https://127.0.0.1:{r2.port + 1}"
    h1, h2 = JoinedHost(mesh, "host1"), JoinedHost(mesh, "host2")

    # Both replicas start at the same moment, each with a fresh CA of its own in its data dir.
    for r in (r1, r2):
        r.proc = mesh.spawn(f"control {r.name}", [
            *CLI, "control", "--store", r.store, "--data", str(r.data),
            "--listen", f"127.0.0.1:{r.port}", "--proxy-listen", f"127.0.0.1:{r.port + 1}"],
            env=ETCD_PASSPHRASE_ENV)
    for r in (r1, r2):
        wait_port(f"127.0.0.1:{r.port + 1}", r.proc, timeout=30)

    # One CA: the same on disk in both data dirs, and the same one both replicas hand out.
    ca1, ca2 = (r1.data / "ca" / "ca.pem").read_bytes(), (r2.data / "ca" / "ca.pem").read_bytes()
    assert ca1 == ca2, "the two replicas use different CAs"
    ca_pem = r1.data / "ca" / "ca.pem"
    ca_cert = x509.load_pem_x509_certificate(ca1)
    for r in (r1, r2):
        cert = server_cert(r.port + 1, ca_pem)  # raises unless it chains to the shared CA under CONTROL_DNS
        assert cert.issuer == ca_cert.subject
        assert spiffe_id_of(cert) == "spiffe://glassmesh.local/control"
    logs = r1.proc.log_text() + r2.proc.log_text()  # type: ignore[union-attr]
    assert logs.count("stored for every replica to share") == 1, logs

    r1.apply(MESH.format(port=APP_PORT, ip1=h1.ip, ip2=h2.ip, extra=""))
    mesh.start_app("http", f"{h2.ip}:{APP_PORT}", "b2")
    t1 = host_add(r1, "host1", "a")
    t2 = host_add(r1, "host2", "b")  # made through replica 1 ...
    assert t1["ca_sha256"] == t2["ca_sha256"] == ca_cert.fingerprint(hashes.SHA256()).hex()
    # What `host add` prints for --control: every live replica's proxy listener, the one asked first.
    assert t1["proxy_url"] == f"{p1},{p2}", t1

    h1.join(t1["proxy_url"].split(","), t1)
    h2.join([p2, p1], t2)  # ... used through replica 2
    h1.wait_ready()
    h2.wait_ready()
    joined = {h.name: json.loads((h.data / "identity" / "identity.json").read_text())["control"] for h in (h1, h2)}
    assert joined == {"host1": p1, "host2": p2}, joined
    wait_for(lambda: h1.on(p1) and h2.on(p2), 10, "host1 on replica 1, host2 on replica 2")

    traffic = BoundedTraffic(h1.outbound, TRAFFIC_RATE, TRAFFIC_CAP_S, int(TRAFFIC_RATE * TRAFFIC_CAP_S))
    try:
        # host1's a (certificate from replica 1) calls host2's b (certificate from replica 2) over mTLS.
        wait_for(lambda: traffic.served_by("b2"), 20, "traffic a -> b")
        began = traffic.served_by("b2")[0]
        time.sleep(1.0)

        cut = time.monotonic()
        r1.kill()
        moved = wait_for(lambda: h1.on(p2), 15, "host1 moves to replica 2")
        print(f"host1 on replica 2 {moved - cut:.2f}s after replica 1 was killed")
        cp = h1.ready()["control_plane"]
        assert cp["replicas"] == [p1, p2] and cp["failovers"] >= 1, cp

        t0 = time.monotonic()
        r2.apply(MESH.format(port=APP_PORT, ip1=h1.ip, ip2=h2.ip, extra="  - name: extra\n"))
        wait_for(lambda: h1.has_service("extra") and h2.has_service("extra"), 10,
                 "a change through replica 2 reaches both proxies")
        print(f"change through replica 2 reached host1 in {time.monotonic() - t0:.3f}s")
        time.sleep(1.0)
        failures = [x for x in traffic.log if x[0] >= began and x[1] != 200]
        assert failures == [], failures[:5]
        assert traffic.served_by("b2", cut)
    finally:
        traffic.stop()
    after = [x for x in traffic.log if x[0] >= cut]
    assert len(after) > 50, len(after)
    print(f"{len([x for x in traffic.log if x[0] >= began])} requests since traffic began, 0 failed; "
          f"test took {time.monotonic() - t_start:.1f}s")
    for h in (h1, h2):
        assert h.proxy is not None and h.proxy.alive()
