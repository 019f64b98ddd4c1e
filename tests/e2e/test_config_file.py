"""`glassmesh proxy` and `glassmesh control` from a config file and the environment, as real processes.

The setting that shows which source won is the access log's path: the
proxy writes a JSON line per request to whichever path the file, the
environment or the flag named, so a request through it says which one did.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.e2e.harness import PROXY_CMD, Host, HttpConn, Mesh, Proc, get, wait_port
from tests.e2e.test_control_join import free_port

CONTROL_CMD = [*PROXY_CMD[:-1], "control"]


def ab_without_h1(mesh: Mesh) -> Host:
    """host1 (client a) calls b on host2; only host2's proxy is started here."""
    h1 = mesh.add_host("host1")
    h2 = mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start_proxy(h2)
    h1.write_snapshot()
    return h1


def wait_ready(proc: Proc, admin: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.alive(), f"{proc.name} exited:\n{proc.log_text()}"
        try:
            if get(admin, "/ready", timeout=1).status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{proc.name} not ready:\n{proc.log_text()}"
        time.sleep(0.05)


def call(outbound: str) -> int:
    with HttpConn(outbound, timeout=10) as c:
        return c.request("GET", "/hello", {"Host": "b", "Connection": "close"}).status


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def refused(mesh: Mesh, name: str, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start a command that must refuse to start: its exit status and what it printed."""
    p = mesh.spawn(name, args, env=env)
    p.expect_exit()
    return p.popen.wait(20), p.log_text()


def write_conf(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_proxy_from_config_file_only_then_env_overrides_file_then_flag_overrides_env(mesh: Mesh) -> None:
    h1 = ab_without_h1(mesh)
    etc = mesh.root / "etc"
    etc.mkdir()
    # The default file ($GLASSMESH_CONFIG_DIR/proxy.yaml); paths relative to it.
    assert h1.snapshot_path == mesh.root / "host1.json"
    write_conf(etc / "proxy.yaml", "# host1's proxy\nconfig: ../host1.json\naccess_log: logs/file.log\nworkers: 1\n")
    (etc / "logs").mkdir()
    env = {"GLASSMESH_CONFIG_DIR": str(etc)}
    admin, outbound = h1.admin, h1.outbound("a")
    logs = {k: etc / "logs" / f"{k}.log" for k in ("file", "env", "flag")}

    def run(extra_env: dict[str, str], args: list[str], name: str) -> None:
        p = mesh.spawn(f"proxy host1 {name}", [*PROXY_CMD, *args], env={**env, **extra_env})
        wait_ready(p, admin)
        before = {k: lines(v) for k, v in logs.items()}
        assert call(outbound) == 200
        deadline = time.monotonic() + 5
        while lines(logs[name]) == before[name] and time.monotonic() < deadline:
            time.sleep(0.05)
        grew = {k for k, v in logs.items() if lines(v) != before[k]}
        assert grew == {name}, (name, grew, p.log_text())
        assert p.stop() == 0

    run({}, [], "file")  # no flag at all: everything from the file
    run({"GLASSMESH_PROXY_ACCESS_LOG": str(logs["env"])}, [], "env")
    run({"GLASSMESH_PROXY_ACCESS_LOG": str(logs["env"])}, ["--access-log", str(logs["flag"])], "flag")


def test_bad_config_file_names_file_line_and_key_and_starts_nothing(mesh: Mesh) -> None:
    h1 = ab_without_h1(mesh)
    conf = write_conf(mesh.root / "proxy.yaml", f"config: {h1.snapshot_path}\n"
                      "workrs: 2\n"
                      "access_log: [a, b]\n"
                      "workers: 0\n"
                      "control: ftp://nowhere\n")
    rc, out = refused(mesh, "proxy bad file", [*PROXY_CMD, "--config-file", str(conf)])
    assert rc == 3  # invalid config (glassmesh/cli/exits.py)
    assert f"{conf}:2: workrs: unknown key (did you mean workers?)" in out
    assert f"{conf}:3: access_log: Expected str, got array" in out
    assert f"{conf}:4: workers: Expected int >= 1" in out
    assert f"{conf}:5: control: must be an http:// or https:// URL" in out
    assert "error: " + str(conf) + ": 4 problems, nothing started" in out and "Traceback" not in out
    try:
        get(h1.admin, "/ready", timeout=1)
        raise AssertionError("the proxy's admin port answers: something started")
    except OSError:
        pass


def test_unsafe_config_files_are_refused(mesh: Mesh) -> None:
    h1 = ab_without_h1(mesh)
    open_conf = write_conf(mesh.root / "open.yaml", f"config: {h1.snapshot_path}\n", 0o664)
    rc, out = refused(mesh, "proxy group-writable", [*PROXY_CMD, "--config-file", str(open_conf)])
    assert rc != 0 and "writable by group or others (mode 0664)" in out
    # A join token inline is a secret: the file must be 0600.
    secret = write_conf(mesh.root / "secret.yaml", "control: https://127.0.0.1:9\ndata: d\njoin: tok\n"
                        "ca_sha256: ab\n", 0o644)
    rc, out = refused(mesh, "proxy readable secret", [*PROXY_CMD, "--config-file", str(secret)])
    assert rc != 0 and "holds a secret and is readable by group or others (mode 0644)" in out
    assert not (mesh.root / "d").exists()


def test_env_values_are_checked_like_flags(mesh: Mesh) -> None:
    rc, out = refused(mesh, "proxy bad env", [*PROXY_CMD, "--config", "x.json"], {"GLASSMESH_PROXY_WORKERS": "0"})
    assert rc == 2 and "Invalid value for GLASSMESH_PROXY_WORKERS (environment): 0 is not in the range 1<=x<=64" in out


def test_control_from_config_file_with_env_and_flag(mesh: Mesh) -> None:
    """A control plane whose data dir comes from the file, the operator port from env, the proxy port from a flag;
    a bad control.yaml is refused with its line."""
    api_port, file_port, proxy_port = free_port(), free_port(), free_port()
    conf = write_conf(mesh.root / "control.yaml", f"data: cp\nlisten: 127.0.0.1:{file_port}\n"
                      f"proxy_listen: 127.0.0.1:{free_port()}\ntrust_domain: example.test\n")
    p = mesh.spawn("control from file", [*CONTROL_CMD, "--config-file", str(conf), "--proxy-listen",
                                          f"127.0.0.1:{proxy_port}"],
                   env={"GLASSMESH_CONTROL_LISTEN": f"127.0.0.1:{api_port}"})
    wait_port(f"127.0.0.1:{api_port}", p)
    wait_port(f"127.0.0.1:{proxy_port}", p)
    assert (mesh.root / "cp" / "admin.pem").exists()  # relative to the file's directory
    assert os.stat(mesh.root / "cp").st_mode & 0o077 == 0
    assert p.stop() == 0

    bad = write_conf(mesh.root / "bad.yaml", "data: cp\nlisten: nowhere\ndns_server: [1.2.3.4:99999]\nstore: 3\n")
    rc, out = refused(mesh, "control bad file", [*CONTROL_CMD, "--config-file", str(bad)])
    assert rc != 0
    assert f"{bad}:2: listen: must be host:port, got 'nowhere'" in out
    assert f"{bad}:3: dns_server: port out of range" in out
    assert f"{bad}:4: store: Expected str, got int" in out
