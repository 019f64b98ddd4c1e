"""Hosts that join with a token: real `glassmesh control`, `glassmesh host add` and `glassmesh proxy --join`.

No certificate is put on disk by the test: the proxies make their keys,
get their host identity by joining, their service certificates by CSR over
mutual TLS, and renew them at half-life (the control plane runs with
16-second leaves here so that renewal happens during the test).
Also: a token works once and not after it expires, and nobody reads a
host's snapshot without that host's certificate.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from glassmesh.ca import spiffe_id_of
from tests.e2e.client import eventually
from tests.e2e.harness import PROXY_CMD, HttpConn, Mesh, Proc, free_port, fresh_ip, get, wait_port
from tests.e2e.operator import api, cli_env

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
APP_PORT = 18080
LEAF_HOURS = 16 / 3600  # 16 s certificates: renewed every ~8 s
CONTROL_DNS = "control.glassmesh.internal"

MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: {port}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
"""


class Control:
    """`glassmesh control` with its operator API (TLS, the admin credential it writes), its proxy listener
    (mTLS) and, for the few proxies here that never join, its insecure plain listener, on free ports."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.port, self.pport, self.iport = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.iport}"  # proxies without a join (insecure, loopback)
        self.api_url = f"https://127.0.0.1:{self.port}"
        self.purl = f"https://127.0.0.1:{self.pport}"
        self.data = mesh.root / "control"
        self.cred = self.data / "admin.pem"
        self.proc = mesh.spawn("control", [*CLI, "control", "--data", str(self.data), "--listen",
                                           f"127.0.0.1:{self.port}", "--proxy-listen", f"127.0.0.1:{self.pport}",
                                           "--insecure-proxy-listen", f"127.0.0.1:{self.iport}",
                                           "--leaf-hours", str(LEAF_HOURS)])
        wait_port(f"127.0.0.1:{self.port}", self.proc)
        wait_port(f"127.0.0.1:{self.pport}", self.proc)
        wait_port(f"127.0.0.1:{self.iport}", self.proc)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=cli_env(self.api_url, self.cred), capture_output=True, text=True,
                              timeout=30)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """An operator call over the API, or a proxy report (`/v1/hosts/H/...`) as a host without a join sends it."""
        if path.startswith("/v1/hosts/") and path.count("/") == 4:
            req = urllib.request.Request(self.url + path, json.dumps(body).encode(), method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        status, doc = api(self.api_url, "POST", path, body, self.cred)
        assert status == 200, (path, status, doc)
        return doc

    def add_host(self, name: str, services: str, ttl: str = "10m") -> dict[str, Any]:
        r = self.cli("host", "add", name, "--services", services, "--ttl", ttl, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def status(self) -> Any:
        return api(self.api_url, "GET", "/v1/status", cred=self.cred)[1]

    def metrics(self) -> str:
        return str(api(self.api_url, "GET", "/metrics", cred=self.cred)[1])


def join_args(cp: Control, doc: dict[str, Any], data: Path) -> list[str]:
    return [*PROXY_CMD, "--control", cp.purl, "--join", doc["token"], "--ca-sha256", doc["ca_sha256"],
            "--data", str(data)]


def wait_exit(proc: Proc, timeout: float = 15) -> int:
    """Wait for a process that is meant to exit on its own (with an error: teardown does not judge it)."""
    proc.expect_exit()
    proc.popen.wait(timeout)
    return int(proc.popen.returncode)


def wait_ready(proc: Proc, admin: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_text()}")
        try:
            r = get(admin, "/ready", timeout=2)
            if r.status == 200:
                return r.json()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} not ready:\n{proc.log_text()}")
        time.sleep(0.05)


def joined_pair(mesh: Mesh, workers: int = 1) -> tuple[Control, str, str]:
    """A control plane and two hosts that joined with tokens: host1 runs a (its proxy with `workers`
    workers), host2 runs b with the echo app `b2`. (control, host1's IP, host2's IP), once a reaches b."""
    cp = Control(mesh)
    ip1, ip2 = fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2), "author": "test"})
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2")
    t1, t2 = cp.add_host("host1", "a"), cp.add_host("host2", "b")
    p1 = mesh.spawn("proxy host1", [*join_args(cp, t1, mesh.root / "h1"), *(["--workers", str(workers)]
                                                                          if workers > 1 else [])])
    p2 = mesh.spawn("proxy host2", join_args(cp, t2, mesh.root / "h2"))
    wait_ready(p1, f"{ip1}:4191")
    wait_ready(p2, f"{ip2}:4191")
    deadline = time.monotonic() + 20
    while call_b(f"{ip1}:4140").status != 200:
        assert time.monotonic() < deadline, "a cannot reach b"
        time.sleep(0.1)
    return cp, ip1, ip2


def call_b(outbound: str) -> Any:
    with HttpConn(outbound, timeout=10) as c:
        return c.request("GET", "/hello", {"Host": "b", "Connection": "close"})


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def https(cp: Control, path: str, ca: Path, cert: Path | None = None, key: Path | None = None,
          body: dict[str, Any] | None = None) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    # Connect to the loopback port but check the control plane's own name, as the proxy does.
    req = urllib.request.Request(f"https://{CONTROL_DNS}:{cp.pport}{path}",
                                 None if body is None else json.dumps(body).encode(),
                                 method="GET" if body is None else "POST")
    orig = socket.getaddrinfo

    def resolve(host: Any, *a: Any, **kw: Any) -> Any:
        return orig("127.0.0.1" if host == CONTROL_DNS else host, *a, **kw)

    socket.getaddrinfo = resolve  # type: ignore[assignment]
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    finally:
        socket.getaddrinfo = orig  # type: ignore[assignment]


@pytest.fixture
def cp(mesh: Mesh) -> Control:
    return Control(mesh)


def test_join_serve_renew_and_who_may_read_what(mesh: Mesh, cp: Control) -> None:
    ip1, ip2 = fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2), "author": "test"})
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2")

    # host add prints a token and the command line; the token is not in the store.
    r = cp.cli("host", "add", "host1", "--services", "a", "--data", "/srv/h1")
    assert r.returncode == 0, r.stderr
    assert "single use" in r.stdout and f"--control {cp.purl} --join " in r.stdout and "--ca-sha256" in r.stdout
    t1 = cp.add_host("host1", "a")
    t2 = cp.add_host("host2", "b")
    assert t1["token"] not in (cp.data / "control.sqlite").read_bytes().decode(errors="replace")

    d1, d2 = mesh.root / "h1", mesh.root / "h2"
    p1 = mesh.spawn("proxy host1", join_args(cp, t1, d1))
    p2 = mesh.spawn("proxy host2", join_args(cp, t2, d2))
    wait_ready(p1, f"{ip1}:4191")
    wait_ready(p2, f"{ip2}:4191")

    # Identity on disk: keys made locally, 0600; certificates by CSR for exactly the admitted services.
    for d, host, svc in ((d1, "host1", "a"), (d2, "host2", "b")):
        assert (d / "identity" / "host.key").stat().st_mode & 0o777 == 0o600
        assert (d / "certs" / f"{svc}.key").stat().st_mode & 0o777 == 0o600
        cert = x509.load_pem_x509_certificate((d / "identity" / "host.pem").read_bytes())
        assert spiffe_id_of(cert) == f"spiffe://glassmesh.local/host/{host}"
        svc_cert = x509.load_pem_x509_certificate((d / "certs" / f"{svc}.pem").read_bytes())
        assert spiffe_id_of(svc_cert) == f"spiffe://glassmesh.local/service/{svc}"
    assert not (d1 / "certs" / "b.pem").exists()

    # Traffic a -> b over mTLS with those certificates (once host2 has reported b healthy).
    deadline = time.monotonic() + 15
    while (resp := call_b(f"{ip1}:4140")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resp.status == 200 and resp.header("x-app") == "b2", resp
    assert ["glassmesh-source", "spiffe://glassmesh.local/service/a"] in resp.json()["headers"]

    # The outage budget: the earliest certificate expiry of the joined hosts.
    budget = cp.status()["outage_budget"]
    assert budget["seconds"] is not None and 0 <= budget["seconds"] <= 20

    # The token was consumed: a second proxy with it is refused, clearly, and exits.
    again = mesh.spawn("proxy reuse", join_args(cp, t1, mesh.root / "h1-again"))
    assert wait_exit(again) != 0
    assert "join refused" in again.log_text() and "already used" in again.log_text()

    # Who may read what on the proxy listener.
    ca = d1 / "identity" / "ca.pem"
    h1 = (d1 / "identity" / "host.pem", d1 / "identity" / "host.key")
    h2 = (d2 / "identity" / "host.pem", d2 / "identity" / "host.key")
    status, doc = https(cp, "/v1/hosts/host1/snapshot?wait=0", ca, *h1)
    assert status == 200 and doc["host"] == "host1"
    status, doc = https(cp, "/v1/hosts/host1/snapshot?wait=0", ca)
    assert status == 403 and "host certificate is required" in doc["error"]
    status, doc = https(cp, "/v1/hosts/host1/snapshot?wait=0", ca, *h2)
    assert status == 403 and "host/host2" in doc["error"]
    status, doc = https(cp, "/v1/status", ca, *h1)  # operator routes are not on the proxy listener
    assert status == 404
    # A joined host's snapshot is not served over plain HTTP either.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{cp.url}/v1/hosts/host1/snapshot?wait=0", timeout=5)
    assert e.value.code == 403
    # host2 cannot get a certificate for a service it was not admitted for.
    from glassmesh.proxy.keygen import generate_key, make_csr

    csr = make_csr(generate_key(), "spiffe://glassmesh.local/service/a")
    status, doc = https(cp, "/v1/hosts/host2/certs", ca, *h2, body={"service": "a", "csr_pem": csr})
    assert status == 403 and "may not serve 'a'" in doc["error"]
    status, doc = https(cp, "/v1/hosts/host1/certs", ca, *h2, body={"service": "a", "csr_pem": csr})
    assert status == 403

    # Renewal at half-life (16 s leaves): new host and service certificates, reloaded, traffic unharmed.
    before = {p: serial(p) for p in (d1 / "identity" / "host.pem", d1 / "certs" / "a.pem", d2 / "certs" / "b.pem")}
    deadline = time.monotonic() + 25
    failures = 0
    while time.monotonic() < deadline and any(serial(p) == s for p, s in before.items()):
        failures += call_b(f"{ip1}:4140").status != 200
        time.sleep(0.2)
    assert all(serial(p) != s for p, s in before.items()), p1.log_text()

    def reloaded() -> None:  # the reload follows the certificate files by a moment
        assert "reloaded renewed certificates" in p1.log_text()

    eventually(reloaded, timeout=5)
    time.sleep(0.5)
    for _ in range(20):
        failures += call_b(f"{ip1}:4140").status != 200
    assert failures == 0
    assert cp.status()["outage_budget"]["seconds"] > 0


def test_expired_token_is_refused(mesh: Mesh, cp: Control) -> None:
    doc = cp.add_host("host9", "a", ttl="1s")
    time.sleep(1.5)
    p = mesh.spawn("proxy expired", join_args(cp, doc, mesh.root / "h9"))
    assert wait_exit(p) != 0
    assert "join refused" in p.log_text() and "expired" in p.log_text()
    assert not (mesh.root / "h9" / "identity" / "identity.json").exists()


def test_wrong_ca_pin_is_refused_before_the_token_is_sent(mesh: Mesh, cp: Control) -> None:
    doc = cp.add_host("host8", "a")
    p = mesh.spawn("proxy pin", join_args(cp, dict(doc, ca_sha256="00" * 32), mesh.root / "h8"))
    assert wait_exit(p) != 0 and "refusing to join" in p.log_text()
    # The token was not used: a proxy with the right pin still joins.
    p = mesh.spawn("proxy pin ok", [*join_args(cp, doc, mesh.root / "h8b")])
    deadline = time.monotonic() + 15
    while not (mesh.root / "h8b" / "identity" / "identity.json").exists():
        assert p.alive() and time.monotonic() < deadline, p.log_text()
        time.sleep(0.05)
    p.stop()
