"""Who may change the mesh: every call to the operator API is made against a real control plane, with
no credential, someone else's certificate, a read-only operator, a foreign CA, and plain HTTP; each is
refused with 401 or 403 (or at the handshake) and nothing changes: no config version, no join token.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from glassmesh.ca import init_ca, load_ca
from tests.e2e.operator import api, cli_env
from tests.e2e.test_control_plane import CLI, MESH, Control


def _raw(c: Control, method: str, path: str, body: Any = None, cert: tuple[Path, Path] | None = None,
         ca: Path | None = None) -> tuple[int, Any]:
    """A TLS client that trusts the mesh CA and presents `cert` (or nothing)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(ca or (c.cred.parent / "ca" / "ca.pem")))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    port = int(c.url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        conn.request(method, path, None if body is None else json.dumps(body).encode(),
                     {"content-type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"null")
    finally:
        conn.close()


def _state(c: Control) -> tuple[int, list[Any]]:
    """The config version in force and the hosts/tokens on record, as the admin sees them."""
    st, cfg = c.api("GET", "/v1/config")
    assert st == 200
    st, hosts = c.api("GET", "/v1/hosts")
    assert st == 200
    return cfg["version"], hosts.get("pending", []) + hosts.get("hosts", [])


CHANGE = [("POST", "/v1/apply", {"yaml": MESH.replace("8080", "9999"), "author": "mallory"}),
          ("POST", "/v1/hosts", {"name": "evil", "services": ["b"]}),
          ("POST", "/v1/rollback", {"version": 1}),
          ("POST", "/v1/drain", {"service": "b"})]


def test_no_credential_gets_401_and_changes_nothing(control: Control) -> None:
    before = _state(control)
    for method, path, body in [*CHANGE, ("GET", "/v1/status", None), ("GET", "/v1/config", None)]:
        status, doc = _raw(control, method, path, body)
        assert status == 401, (path, status, doc)
        assert "no operator credential" in doc["error"]
    assert _state(control) == before


@pytest.mark.parametrize("who", ["service", "host"])
def test_a_mesh_certificate_that_is_not_an_operator_gets_403(control: Control, who: str) -> None:
    """A compromised service or host holds a valid certificate from the mesh CA: it still changes nothing."""
    ca = load_ca(control.cred.parent / "ca")
    cert = ca.issue(who, "b").write(control.cred.parent / f"stolen-{who}")  # type: ignore[arg-type]
    before = _state(control)
    for method, path, body in CHANGE:
        status, doc = _raw(control, method, path, body, cert=cert)
        assert status == 403 and "is not an operator credential" in doc["error"], (path, status, doc)
    assert _state(control) == before


def test_read_only_operator_reads_and_may_not_change(control: Control, tmp_path: Path) -> None:
    out = tmp_path / "viewer.pem"
    r = subprocess.run([*CLI, "ca", "issue", "--dir", str(control.cred.parent / "ca"), "--operator", "viewer",
                        "--role", "read-only", "--out", str(out)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert api(control.url, "GET", "/v1/status", cred=out)[0] == 200
    before = _state(control)
    for method, path, body in CHANGE:
        status, doc = api(control.url, method, path, body, cred=out)
        assert status == 403 and "'viewer' is read-only" in doc["error"], (path, status, doc)
    assert _state(control) == before
    # The CLI says the same in one line and exits 1.
    (tmp_path / "m.yaml").write_text(MESH.replace("8080", "9999"))
    r = subprocess.run([*CLI, "apply", "-f", str(tmp_path / "m.yaml")], env=cli_env(control.url, out),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 4 and "needs the admin role" in r.stderr, r.stderr
    r = subprocess.run([*CLI, "status"], env=cli_env(control.url, out), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "config version" in r.stdout, r.stderr


def test_admin_changes_are_recorded_under_its_credential(control: Control) -> None:
    status, doc = control.api("POST", "/v1/apply", {"yaml": MESH.replace("8080", "8081"), "author": "mallory"})
    assert status == 200 and doc["committed"], doc
    hist = control.api("GET", "/v1/history")[1]["versions"]
    assert hist[0]["author"] == "admin", hist[0]


def test_a_credential_from_another_ca_is_refused_at_the_handshake(control: Control, tmp_path: Path) -> None:
    other = init_ca(tmp_path / "other-ca", "glassmesh.local")
    leaf = other.issue("operator", "admin", role="admin")
    assert leaf.key_pem is not None
    (tmp_path / "o.pem").write_bytes(leaf.cert_pem)
    (tmp_path / "o.key").write_bytes(leaf.key_pem)
    (tmp_path / "o.key").chmod(0o600)
    before = _state(control)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        _raw(control, "POST", "/v1/apply", CHANGE[0][2], cert=(tmp_path / "o.pem", tmp_path / "o.key"))
    assert _state(control) == before


def test_plain_http_to_the_operator_port_gets_nothing(control: Control) -> None:
    port = int(control.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
    assert b"200 OK" not in data and b"hosts" not in data, data


def test_insecure_proxy_listener_serves_no_operator_route(control: Control) -> None:
    req = http.client.HTTPConnection("127.0.0.1", int(control.insecure.rsplit(":", 1)[1]), timeout=5)
    try:
        req.request("POST", "/v1/apply", json.dumps(CHANGE[0][2]).encode())
        assert req.getresponse().status == 404
    finally:
        req.close()


def test_cli_without_a_credential_says_where_to_get_one(control: Control, tmp_path: Path) -> None:
    env = {**cli_env(control.url, "/nonexistent"), "XDG_CONFIG_HOME": str(tmp_path / "empty")}
    del env["GLASSMESH_CREDENTIAL"]
    r = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "no operator credential" in r.stderr and "DIR/admin.pem" in r.stderr, r.stderr
    r = subprocess.run([*CLI, "status"], env=cli_env(control.url.replace("https", "http"), control.cred),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "speaks TLS" in r.stderr, r.stderr
