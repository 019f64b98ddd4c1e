"""Secrets on disk: another local user reads nothing, and a key others could read is refused, not used.

The attacker is a real other local user (`nobody`, through setpriv) reading
the files a real control plane and a real proxy wrote.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import PROXY_CMD, Mesh
from tests.e2e.test_admin_and_config import _run_proxy, _valid_snapshot
from tests.e2e.test_control_plane import CLI, Control


def _as_nobody_cat(path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(path)],
                          capture_output=True, timeout=10)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every local user may enter, as /var/lib is (pytest's tmp_path is 0700 all the way up)."""
    d = Path(tempfile.mkdtemp(prefix="gm-sec-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_control_plane_state_is_private_to_its_user(open_dir: Path) -> None:
    """The store (with the CA key in it), its WAL and the CA dir: 0600 files in 0700 dirs; nobody reads them."""
    tmp_path = open_dir
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0o644)
    assert _as_nobody_cat(probe).returncode == 0, "the attacker must be able to reach this directory"
    c = Control(tmp_path)
    try:
        (tmp_path / "mesh.yaml").write_text("services:\n  - {name: a}\nhosts:\n  - {name: h1, address: "
                                            "'127.0.0.1:4143', services: [a]}\n")
        assert c.cli("apply", "-f", str(tmp_path / "mesh.yaml")).returncode == 0
        data = tmp_path / "data"
        assert _mode(data) == 0o700 and _mode(data / "ca") == 0o700
        for f in ("control.sqlite", "control.sqlite-wal", "control.sqlite-shm", "ca/ca.key"):
            assert _mode(data / f) == 0o600, (f, oct(_mode(data / f)))
        stolen = _as_nobody_cat(data / "control.sqlite")
        assert stolen.returncode != 0 and b"Permission denied" in stolen.stderr, stolen
        assert _as_nobody_cat(data / "ca" / "ca.key").returncode != 0
    finally:
        c.stop()


def test_state_an_older_version_left_readable_is_narrowed_at_start(open_dir: Path) -> None:
    tmp_path = open_dir
    c = Control(tmp_path)
    c.stop()
    data = tmp_path / "data"
    os.chmod(data, 0o755)
    os.chmod(data / "control.sqlite", 0o644)
    assert _as_nobody_cat(data / "control.sqlite").returncode == 0  # the attack works on such a store...
    c = Control(tmp_path)
    try:
        assert _mode(data) == 0o700 and _mode(data / "control.sqlite") == 0o600
        assert _as_nobody_cat(data / "control.sqlite").returncode != 0  # ...and not once it has started
    finally:
        c.stop()


def test_control_plane_refuses_a_ca_key_others_can_read(tmp_path: Path) -> None:
    c = Control(tmp_path)
    c.stop()
    key = tmp_path / "data" / "ca" / "ca.key"
    os.chmod(key, 0o644)
    p = subprocess.run([*CLI, "control", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0, p
    out = p.stdout + p.stderr
    assert f"{key} is accessible by group or others (mode 0644)" in out and f"chmod 600 {key}" in out, out
    assert "Traceback" not in out


def test_proxy_refuses_a_service_key_others_can_read(mesh: Mesh) -> None:
    snap = _valid_snapshot(mesh)
    key = Path(snap["local_services"][0]["key"])
    key = key if key.is_absolute() else mesh.root / key
    os.chmod(key, 0o640)
    code, out = _run_proxy(mesh, snap, "group-readable-key")
    assert code not in (None, 0), out
    assert "is accessible by group or others (mode 0640)" in out and "chmod 600" in out, out
    assert "Traceback" not in out
    assert PROXY_CMD  # the proxy ran as a user runs it: glassmesh proxy --config


def test_a_proxys_data_dir_certs_and_access_log_are_private(mesh: Mesh) -> None:
    """A controlled proxy's DIR (keys, snapshots) and certs/ are 0700, its access log 0600, even if made wider."""
    from tests.e2e.test_control_lifecycle import Pair

    pair = Pair(mesh)
    os.chmod(pair.h1.data, 0o755)
    os.chmod(pair.h1.data / "certs", 0o755)
    log = mesh.root / "access.log"
    log.touch(mode=0o644)
    os.chmod(log, 0o644)
    pair.up(["--access-log", str(log)])
    assert _mode(pair.h1.data) == 0o700 and _mode(log) == 0o600, (oct(_mode(pair.h1.data)), oct(_mode(log)))
    assert _mode(pair.h1.data / "snapshot.json") == 0o600
