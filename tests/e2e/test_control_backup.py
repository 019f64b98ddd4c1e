"""`glassmesh control backup` / `restore` with real control planes, real joined proxies, SQLite and a real etcd.

The round trip an operator needs after losing a control plane: a backup taken while it serves,
the refusals that keep a mistake from destroying state (a wrong passphrase, a store that holds
something), then a restore into a new data dir (SQLite) or an emptied etcd, a start, and the
same config versions in `history` and `get`, while hosts that joined before keep working: their
certificates chain to the restored CA, and traffic between them flows.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Mesh, Proc, fresh_ip, wait_port
from tests.e2e.operator import cli_env
from tests.e2e.test_control_join import APP_PORT, CLI, call_b, free_port, join_args, wait_ready
from tests.e2e.test_control_join import MESH as JOIN_MESH
from tests.etcd_cluster import ETCD_PASSPHRASE_ENV, EtcdCluster

# test_control_join's mesh, with host2 running `more` services too: three config versions to back up.
MESH = JOIN_MESH.replace("services: [b]}}", "services: [b{more}]}}")
assert "{more}" in MESH
PASSPHRASE = "backup passphrase, kept apart from the file"


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster.started() as c:
        yield c


class Plane:
    """A `glassmesh control` on fixed ports (so that a restored one takes the place of the first)."""

    def __init__(self, mesh: Mesh, store: str) -> None:
        self.mesh, self.store = mesh, store
        self.port, self.pport = free_port(), free_port()
        self.api_url, self.purl = f"https://127.0.0.1:{self.port}", f"https://127.0.0.1:{self.pport}"
        self.env = dict(ETCD_PASSPHRASE_ENV) if store != "sqlite" else {}
        self.proc: Proc | None = None
        self.data = mesh.root / "control"

    def start(self, data: Path) -> None:
        self.data = data
        self.proc = self.mesh.spawn(f"control {data.name}", [
            *CLI, "control", "--data", str(data), "--store", self.store, "--listen", f"127.0.0.1:{self.port}",
            "--proxy-listen", f"127.0.0.1:{self.pport}"], env=self.env)
        wait_port(f"127.0.0.1:{self.port}", self.proc)
        wait_port(f"127.0.0.1:{self.pport}", self.proc)

    def cli(self, *args: str, cred: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=dict(cli_env(self.api_url, cred or self.data / "admin.pem"),
                                                          **self.env),
                              capture_output=True, text=True, timeout=60)

    def control(self, *args: str, data: Path | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("control", *args, "--data", str(data or self.data), "--store", self.store)


def _history(p: Plane, cred: Path) -> str:
    """`glassmesh history --diff` as the operator reads it: versions, authors, times, hashes, diffs."""
    r = p.cli("history", "--diff", cred=cred)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _wipe(etcd: EtcdCluster) -> None:
    """What losing etcd's data looks like: nothing under the prefix (etcd's own API, not glassmesh's)."""
    key = b"/glassmesh/"
    body = {"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(b"/glassmesh0").decode()}
    req = urllib.request.Request(etcd.endpoints[0] + "/v3/kv/deleterange", json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


@pytest.mark.parametrize("kind", ["sqlite", "etcd"])
def test_backup_while_serving_refusals_then_restore_keeps_versions_and_joined_hosts(
        mesh: Mesh, kind: str, request: pytest.FixtureRequest) -> None:
    cluster: EtcdCluster | None = request.getfixturevalue("etcd") if kind == "etcd" else None
    if cluster is not None:
        _wipe(cluster)  # the module's cluster starts empty for each test
    p = Plane(mesh, cluster.url if cluster else "sqlite")
    first = mesh.root / "control"
    p.start(first)
    cred = first / "admin.pem"  # the operator's credential: it keeps working against the restored plane
    ip1, ip2 = fresh_ip(), fresh_ip()
    for more in ("", ", a", ""):  # three config versions
        (mesh.root / "mesh.yaml").write_text(MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2, more=more))
        r = p.cli("apply", "-f", str(mesh.root / "mesh.yaml"), cred=cred)
        assert r.returncode == 0, r.stderr + r.stdout
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2")
    tokens = {}
    for host, svc in (("host1", "a"), ("host2", "b")):
        r = p.cli("host", "add", host, "--services", svc, "--json", cred=cred)
        assert r.returncode == 0, r.stderr
        tokens[host] = json.loads(r.stdout)
    for host, ip in (("host1", ip1), ("host2", ip2)):
        proc = mesh.spawn(f"proxy {host}", join_args(p, tokens[host], mesh.root / host))  # type: ignore[arg-type]
        wait_ready(proc, f"{ip}:4191")
    _wait_b(ip1)
    before = _history(p, cred)
    assert [ln.split()[0] for ln in before.splitlines()[1:4]] == ["3", "2", "1"], before
    config = p.cli("get", cred=cred).stdout

    # A backup of the running control plane.
    pf = mesh.root / "passphrase"
    pf.write_text(PASSPHRASE + "\n")
    pf.chmod(0o600)
    backup = mesh.root / "glassmesh.backup"
    r = p.control("backup", str(backup), "--passphrase-file", str(pf))
    assert r.returncode == 0, r.stderr
    assert "3 config version(s) (current: 3), 2 host(s), the CA" in r.stdout
    assert backup.stat().st_mode & 0o777 == 0o600
    text = backup.read_text()
    assert "PRIVATE KEY" not in text and json.loads(text)["config_version"] == 3  # the CA key only encrypted
    assert p.control("backup", str(backup), "--passphrase-file", str(pf)).returncode != 0  # no silent overwrite

    p.proc.stop()  # type: ignore[union-attr]
    second = mesh.root / "control-restored"
    # Refusals: a wrong passphrase writes nothing; a store that holds state is not overwritten.
    env_wrong = dict(GLASSMESH_BACKUP_PASSPHRASE="not the right passphrase")
    wrong = subprocess.run([*CLI, "control", "restore", str(backup), "--data", str(second), "--store", p.store],
                           env=dict(cli_env(p.api_url, cred), **p.env, **env_wrong), capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode != 0 and "cannot be opened with this passphrase" in wrong.stderr, wrong.stderr
    assert not second.exists()
    target = first if cluster is None else second  # SQLite: the old data dir; etcd: the cluster still holds it
    r = p.control("restore", str(backup), "--passphrase-file", str(pf), data=target)
    assert r.returncode != 0 and "already holds state" in r.stderr and "--force" in r.stderr, r.stderr
    if cluster is not None:
        _wipe(cluster)  # the disaster: etcd's data is gone

    r = p.control("restore", str(backup), "--passphrase-file", str(pf), data=second)
    assert r.returncode == 0, r.stderr
    assert "restored 3 config versions (current: 3), 2 host(s)" in r.stdout, r.stdout
    p.start(second)
    assert _history(p, cred) == before  # the same versions, with the old operator credential
    assert p.cli("get", cred=cred).stdout == config
    # The joined hosts' proxies reconnect to it with their certificates (the restored CA's) and serve on.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = json.loads(p.cli("status", "--json", cred=cred).stdout)
        if all(h["in_sync"] and h["last_seen_s"] is not None and h["last_seen_s"] < 5 for h in st["hosts"]):
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"joined hosts did not come back: {st['hosts']}")
    _wait_b(ip1)
    # And the restored plane takes changes: the next version is 4.
    (mesh.root / "mesh.yaml").write_text(MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2, more=", a"))
    r = p.cli("apply", "-f", str(mesh.root / "mesh.yaml"), cred=cred)
    assert r.returncode == 0, r.stderr
    assert _history(p, cred).splitlines()[1].split()[0] == "4"


def _wait_b(ip1: str) -> None:
    deadline = time.monotonic() + 20
    while (resp := call_b(f"{ip1}:4140")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resp.status == 200 and resp.header("x-app") == "b2", resp
