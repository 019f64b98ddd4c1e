"""`glassmesh host join`: one command leaves a host ready, then `glassmesh proxy --config-file` alone runs it.

Real parts: a control plane started from its own control.yaml, `host add`
through the operator API, `host join` into temporary directories (never
/etc or /var/lib), and proxies that get their snapshot and certificates from
the control plane and carry a request between them over mutual TLS.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import yaml

from tests.e2e.harness import PROXY_CMD, Mesh, fresh_ip, wait_port
from tests.e2e.operator import api, cli_env
from tests.e2e.test_control_join import APP_PORT, CLI, MESH, call_b, free_port, wait_ready


def test_host_join_writes_config_and_data_then_proxy_runs_from_it(mesh: Mesh) -> None:
    etc = mesh.root / "etc"
    etc.mkdir(mode=0o700)
    port, pport = free_port(), free_port()
    conf = etc / "control.yaml"
    conf.write_text(f"data: {mesh.root / 'control'}\nlisten: 127.0.0.1:{port}\nproxy_listen: 127.0.0.1:{pport}\n")
    conf.chmod(0o600)
    control = mesh.spawn("control", [*CLI, "control"], env={"GLASSMESH_CONFIG_DIR": str(etc)})
    wait_port(f"127.0.0.1:{port}", control)
    wait_port(f"127.0.0.1:{pport}", control)
    api_url, cred = f"https://127.0.0.1:{port}", mesh.root / "control" / "admin.pem"
    env = cli_env(api_url, cred)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)

    ip1, ip2 = fresh_ip(), fresh_ip()
    status, doc = api(api_url, "POST", "/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2),
                                                     "author": "test"}, cred)
    assert status == 200, doc
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2")

    # host add points at host join too.
    r = cli("host", "add", "host1", "--services", "a")
    assert r.returncode == 0, r.stderr
    assert "glassmesh host join --control https://127.0.0.1:" in r.stdout.replace("\n", " ")

    procs = {}
    for name, svc, ip in (("host1", "a", ip1), ("host2", "b", ip2)):
        r = cli("host", "add", name, "--services", svc, "--json")
        assert r.returncode == 0, r.stderr
        tok = yaml.safe_load(r.stdout)
        cdir, data = mesh.root / f"{name}-etc", mesh.root / f"{name}-data"
        join = ["host", "join", "--control", tok["proxy_url"], "--token", tok["token"], "--ca-sha256",
                tok["ca_sha256"], "--config-dir", str(cdir), "--data", str(data)]
        r = cli(*join)
        assert r.returncode == 0, r.stderr
        path = cdir / "proxy.yaml"
        assert f"joined as host {name} (may serve: {svc})" in r.stdout
        assert f"wrote {path} (0600)" in r.stdout
        assert f"glassmesh proxy --config-file {path}" in r.stdout
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert os.stat(data).st_mode & 0o777 == 0o700
        assert (data / "identity" / "host.key").stat().st_mode & 0o777 == 0o600
        written = yaml.safe_load(path.read_text())
        assert written == {"control": tok["proxy_url"], "host": name, "data": str(data)}
        assert tok["token"] not in path.read_text()

        # Again: refused without --force, and the file is untouched.
        before = path.read_bytes()
        r = cli(*join)
        assert r.returncode != 0 and f"{path} exists" in r.stderr and "--force" in r.stderr
        assert path.read_bytes() == before

        # The proxy needs nothing but its config file.
        procs[name] = mesh.spawn(f"proxy {name}", [*PROXY_CMD, "--config-file", str(path)])
        wait_ready(procs[name], f"{ip}:4191")

    assert Path(mesh.root / "host1-data" / "certs" / "a.pem").exists()
    deadline = time.monotonic() + 15
    while (resp := call_b(f"{ip1}:4140")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resp.status == 200 and resp.header("x-app") == "b2", resp
    assert ["glassmesh-source", "spiffe://glassmesh.local/service/a"] in resp.json()["headers"]


def test_host_join_refusals_write_nothing_and_spend_no_token(mesh: Mesh) -> None:
    """A wrong token or fingerprint writes no config; a config dir that cannot be made fails before the join."""
    port, pport = free_port(), free_port()
    control = mesh.spawn("control", [*CLI, "control", "--data", str(mesh.root / "control"), "--listen",
                                     f"127.0.0.1:{port}", "--proxy-listen", f"127.0.0.1:{pport}"])
    wait_port(f"127.0.0.1:{pport}", control)
    env = cli_env(f"https://127.0.0.1:{port}", mesh.root / "control" / "admin.pem")
    doc = yaml.safe_load(subprocess.run([*CLI, "host", "add", "h", "--services", "a", "--json"], env=env,
                                        capture_output=True, text=True, timeout=60, check=True).stdout)
    cdir = mesh.root / "etc"
    r = subprocess.run([*CLI, "host", "join", "--control", doc["proxy_url"], "--token", "not-the-token",
                        "--ca-sha256", doc["ca_sha256"], "--config-dir", str(cdir), "--data",
                        str(mesh.root / "data")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "join refused" in r.stderr, r.stderr
    assert not (cdir / "proxy.yaml").exists()
    r = subprocess.run([*CLI, "host", "join", "--control", doc["proxy_url"], "--token", doc["token"],
                        "--ca-sha256", "00" * 32, "--config-dir", str(cdir), "--data", str(mesh.root / "data")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "refusing to join" in r.stderr, r.stderr
    assert not (cdir / "proxy.yaml").exists()
    blocker = mesh.root / "a-file"
    blocker.write_text("")
    r = subprocess.run([*CLI, "host", "join", "--control", doc["proxy_url"], "--token", doc["token"],
                        "--ca-sha256", doc["ca_sha256"], "--config-dir", str(blocker / "etc"), "--data",
                        str(mesh.root / "data-blocked")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "Not a directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (mesh.root / "data-blocked" / "identity").exists()
    r = subprocess.run([*CLI, "host", "join", "--control", doc["proxy_url"], "--token", doc["token"],
                        "--ca-sha256", doc["ca_sha256"], "--config-dir", str(cdir), "--data",
                        str(mesh.root / "data"), "--user", "no-such-user-here"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "no such user 'no-such-user-here'" in r.stderr, r.stderr
    assert not (cdir / "proxy.yaml").exists()
    # The token was not spent by any of these. The files go to the service's user (here `nobody`), whole.
    r = subprocess.run([*CLI, "host", "join", "--control", doc["proxy_url"], "--token", doc["token"],
                        "--ca-sha256", doc["ca_sha256"], "--config-dir", str(cdir), "--data",
                        str(mesh.root / "data"), "--user", "nobody"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "joined as host h " in r.stdout, r.stderr
    assert "(0600, owned by nobody)" in r.stdout
    nobody = pwd.getpwnam("nobody").pw_uid
    for f in (cdir / "proxy.yaml", mesh.root / "data", mesh.root / "data" / "identity" / "host.key"):
        assert f.stat().st_uid == nobody, f
