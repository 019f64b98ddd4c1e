"""The package: `make dist`'s wheel installs on a host with no compiler and no source tree, and runs compiled.

The wheel is built once per session (`python -m build`, what `make dist` runs)
from a copy of the tree, then installed with Debian's own python3 into a fresh
venv in a temporary directory, binary packages only (pip compiles nothing).
Proxies started from that venv carry real traffic over mTLS, and the test
reads /proc/PID/maps to see that the compiled hot path mapped into the
process is the venv's, and that nothing is loaded from the source tree.

A pure-Python install (the sdist on a host whose C compiler fails) must say
so: a WARNING line on stderr at start, and `hot_path` in /ready.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

from glassmesh.buildinfo import HOT_MODULES
from tests.e2e.harness import Host, Mesh, Proc, get
from tests.e2e.operator import cli_env
from tests.e2e.test_control_watch import CHost, Control
from tests.e2e.test_demo import _bindable
from tests.e2e.test_units import verify
from tests.packaging import REPO
from tests.packaging import venv as _make_venv
from tests.packaging import wheel as _wheel

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")

@pytest.fixture(scope="session")
def installed(dist_dir: Path) -> Iterator[Path]:
    """The wheel in a fresh venv: binary packages only, so nothing could be compiled on the way."""
    root = Path(tempfile.mkdtemp(prefix="gm-venv-"))
    try:
        yield _make_venv(root / "venv", "--only-binary=:all:", str(_wheel(dist_dir)))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _start(mesh: Mesh, host: Host, venv: Path, stderr: Path | None = None) -> Proc:
    """`glassmesh proxy --config FILE` from `venv`, nothing from the tree on its path; waits for /ready."""
    path = host.write_snapshot()
    cmd = [str(venv / "bin" / "glassmesh"), "proxy", "--config", str(path)]
    if stderr is not None:  # stderr on its own, to see what goes there (exec: the PID stays the proxy's)
        cmd = ["sh", "-c", 'exec "$@" 2>"$0"', str(stderr), *cmd]
    empty = mesh.root / "no-python-path"
    empty.mkdir(exist_ok=True)
    host.proxy = mesh.spawn(f"proxy {host.name} (installed)", cmd,
                            env={"PYTHONPATH": str(empty), "PYTHONSAFEPATH": "1"})
    mesh.wait_ready(host)
    return host.proxy


def _mapped(pid: int) -> set[str]:
    """The files mapped into process `pid` (its shared libraries and extension modules among them)."""
    out = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/"):
            out.add(parts[5])
    return out


def _curl(addr: str, service: str, path: str = "/hello") -> tuple[int, str]:
    """curl as a local app calls a service: to its outbound listener, the service named in Host."""
    r = subprocess.run(["curl", "-sS", "--max-time", "10", "-H", f"Host: {service}", "-o", "-", "-w", "\n%{http_code}",
                        f"http://{addr}{path}"], capture_output=True, text=True, timeout=20)
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body


def test_wheel_and_sdist_carry_the_compiled_hot_path_and_full_metadata(dist_dir: Path) -> None:
    whl = _wheel(dist_dir)
    assert "-cp311-cp311-linux_" in whl.name, whl.name  # a platform wheel: it carries C extensions
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta = Parser().parsestr(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode())
    for mod in HOT_MODULES:
        stem = mod.replace(".", "/") + ".cpython-311-"
        assert any(n.startswith(stem) and n.endswith(".so") for n in names), f"{mod} is not compiled in {whl.name}"
    assert any(n.startswith("glassmesh_hot__mypyc.") and n.endswith(".so") for n in names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    # The dashboard's page is package data: the control plane serves it from the installed package.
    assert {f"glassmesh/dashboard/{f}" for f in ("index.html", "app.js", "app.css", "favicon.svg")} <= set(names)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta["Requires-Python"] == ">=3.11"
    assert meta.get_content_type() == "text/markdown" or meta["Description-Content-Type"] == "text/markdown"
    assert "## Install on hosts" in meta.get_payload()
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Homepage", "Source", "Issues"}
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Operating System :: POSIX :: Linux" in classifiers
    (sdist,) = dist_dir.glob("glassmesh-*.tar.gz")
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"mypyc.ini", "LICENSE", "setup.py", "pyproject.toml", "glassmesh/proxy/http.py",
            "glassmesh/dashboard/app.js"} <= members


def test_installed_wheel_proxies_traffic_with_the_compiled_hot_path(mesh: Mesh, installed: Path) -> None:
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    p2 = _start(mesh, h2, installed)
    p1 = _start(mesh, h1, installed)

    code, body = _curl(h1.outbound("a"), "b")
    assert code == 200, body
    assert json.loads(body)["app"] == "b@host2"

    site = next((installed / "lib").glob("python3.*/site-packages"))
    for proc, host in ((p1, h1), (p2, h2)):
        # The compiled code is one library (mypyc's group), each module a small stub that enters it.
        maps = _mapped(proc.pid)
        ours = [m for m in maps if "glassmesh" in m and m.endswith(".so")]
        group = [str(p) for p in site.glob("glassmesh_hot__mypyc.cpython-311-*.so")]
        assert len(group) == 1 and [m for m in ours if Path(m).name.startswith("glassmesh_hot__mypyc.")] == group, ours
        assert all(m.startswith(str(site)) for m in ours), ours
        assert not [m for m in maps if m.startswith(str(REPO))], "the installed proxy loaded files from the tree"
        ready = get(host.admin, "/ready").json()
        assert ready["hot_path"] == {"build": "mypyc", "compiled": len(HOT_MODULES), "of": len(HOT_MODULES),
                                     "interpreted": [], "stale": []}
        assert "WARNING" not in proc.log_text()
        assert "hot path: mypyc" in proc.log_text()


def test_installed_demo_runs_and_status_shows_compiled_proxies(installed: Path, tmp_path: Path,
                                                               demo_addresses: None) -> None:
    """`glassmesh demo` from the venv (control plane, proxies, apps, traffic: the package's own), 0 failures."""
    if not all(_bindable(ip, port) for ip, port in [("127.0.0.1", 4200), ("127.0.0.11", 4143), ("127.0.0.12", 4143)]):
        pytest.skip("the demo's addresses are in use (another demo runs)")
    glassmesh = str(installed / "bin" / "glassmesh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLASSMESH_") and k != "PYTHONPATH"}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="250", XDG_CONFIG_HOME=str(tmp_path / "config"))
    demo = subprocess.Popen([glassmesh, "demo", "--duration", "12", "--state-dir", str(tmp_path / "state")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    got: list[str] = []
    status: subprocess.CompletedProcess[str] | None = None
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            got.append(line)
            if status is None and "instances registered and healthy" in line:
                deadline = time.monotonic() + 10
                while True:  # each host's first ack says its build; acks are written in batches
                    status = subprocess.run([glassmesh, "status", "--json"], env=env, capture_output=True,
                                            text=True, timeout=60, cwd=tmp_path)
                    if status.returncode != 0 or time.monotonic() > deadline or all(
                            h["hot_path"] for h in json.loads(status.stdout)["hosts"]):
                        break
                    time.sleep(0.2)
        code = demo.wait(180)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    out = "".join(got)
    assert code == 0, out[-5000:]
    assert "Traceback" not in out and "WARNING: glassmesh proxy" not in out
    assert status is not None and status.returncode == 0, status
    builds = {h["name"]: h["hot_path"] for h in json.loads(status.stdout)["hosts"]}
    assert builds == {"host1": "mypyc", "host2": "mypyc", "host3": "mypyc", "host4": "mypyc"}, builds


@pytest.fixture(scope="session")
def pure(dist_dir: Path) -> Iterator[Path]:
    """The sdist installed on a host whose C compiler fails (CC=false): setup.py falls back to plain Python."""
    root = Path(tempfile.mkdtemp(prefix="gm-pure-"))
    (sdist,) = dist_dir.glob("glassmesh-*.tar.gz")
    try:
        yield _make_venv(root / "venv", str(sdist), env={"CC": "false"})
    finally:
        shutil.rmtree(root, ignore_errors=True)


MESH = """\
services:
  - name: a
    calls: [b]
  - name: b
    port: 18080
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
"""


def test_pure_python_install_says_so_at_start_in_ready_and_in_status(mesh: Mesh, pure: Path) -> None:
    control = Control(mesh)
    control.start()
    h1 = CHost(mesh, "host1", ["a"])
    control.apply(MESH.format(ip1=h1.ip))
    stderr = mesh.root / "host1.stderr"
    empty = mesh.root / "no-python-path"
    empty.mkdir()
    h1.proxy = mesh.spawn("proxy host1 (pure)", [
        "sh", "-c", 'exec "$@" 2>"$0"', str(stderr),
        str(pure / "bin" / "glassmesh"), "proxy", "--control", control.url, "--host", "host1", "--data", str(h1.data),
    ], env={"PYTHONPATH": str(empty), "PYTHONSAFEPATH": "1"})
    ready = h1.wait_ready()

    assert ready["hot_path"] == {"build": "python", "compiled": 0, "of": len(HOT_MODULES),
                                 "interpreted": list(HOT_MODULES), "stale": []}
    warnings = [x for x in stderr.read_text().splitlines() if x.startswith("WARNING")]
    assert len(warnings) == 1, stderr.read_text()
    assert warnings[0].startswith("WARNING: glassmesh proxy runs all of the request path interpreted (pure Python, "
                                  f"0 of {len(HOT_MODULES)} hot modules compiled): about 1.7 times the CPU per request"), warnings
    assert "hot path: python" in stderr.read_text()  # the start-up line says it too

    env = {**cli_env(control.api_url, control.cred), "PYTHONPATH": str(empty)}
    deadline = time.monotonic() + 15
    while True:  # the ack of its first snapshot carries it; acks are written in batches
        r = subprocess.run([str(pure / "bin" / "glassmesh"), "status", "--json"], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        host = next(h for h in json.loads(r.stdout)["hosts"] if h["name"] == "host1")
        if host["hot_path"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert host["hot_path"] == "python", host
    r = subprocess.run([str(pure / "bin" / "glassmesh"), "status"], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "  host1: hot path python" in lines, r.stdout


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze (Debian's systemd) is missing")
def test_installed_wheel_carries_its_systemd_units(installed: Path, tmp_path: Path) -> None:
    """The units are package data: the venv's glassmesh writes them, pointing at itself, and they verify."""
    glassmesh = installed / "bin" / "glassmesh"
    r = subprocess.run([str(glassmesh), "install-units", "--prefix", str(tmp_path)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # This venv is under /tmp, which PrivateTmp=yes hides from the service: said, not silently written.
    assert "WARNING" in r.stderr and "PrivateTmp=yes" in r.stderr, r.stderr
    units = [tmp_path / "etc" / "systemd" / "system" / f"glassmesh-{u}.service" for u in ("proxy", "control")]
    for unit in units:
        assert f"ExecStart={glassmesh} " in unit.read_text()
    done = verify(*units)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done
