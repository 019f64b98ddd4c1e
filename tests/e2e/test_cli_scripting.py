"""The CLI as a deploy script uses it: machine-readable output, stdin, --wait, and exit statuses it can branch on.

Real processes: a `glassmesh control`, three `glassmesh proxy --control`
hosts and an echo app (the Topo of test_control_watch), and the real
`glassmesh` command, run as a subprocess the way a script runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import Mesh
from tests.e2e.operator import cli_env
from tests.e2e.test_control_watch import CLI, Topo, wait_for

EXTRA_SERVICE = "  - name: c\n    port: 18081\n"


@pytest.fixture
def topo(mesh: Mesh) -> Topo:
    t = Topo(mesh)
    t.up()
    return t


def run(topo: Topo, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          env={**cli_env(topo.cp.api_url, topo.cp.cred), **(env or {})}, cwd=topo.mesh.root)


def with_c(text: str) -> str:
    """The topology's config plus a service c that nobody runs: host1's snapshot lists it as withheld."""
    return text.replace("hosts:\n", EXTRA_SERVICE + "hosts:\n", 1)


def test_every_read_command_speaks_json_and_yaml(topo: Topo) -> None:
    # A change every host acks: each proxy's last call then says its release (the test harness read the
    # snapshots itself while setting up, as a client that says nothing of itself).
    assert run(topo, "apply", "-f", "-", "--wait", stdin=with_c(topo.yaml())).returncode == 0
    for args in (["status"], ["history"], ["get"], ["host", "list"], ["version"]):
        j = run(topo, *args, "-o", "json")
        assert j.returncode == 0, (args, j.stderr)
        doc = json.loads(j.stdout)
        y = run(topo, *args, "-o", "yaml")
        assert y.returncode == 0, (args, y.stderr)
        if args == ["get"]:  # yaml is the config itself (as `apply -f` takes it); json wraps it with its version
            assert yaml.safe_load(y.stdout) == doc["doc"]
        elif args not in (["status"], ["version"]):  # those two move between calls
            assert yaml.safe_load(y.stdout) == doc, args
    status = json.loads(run(topo, "status", "-o", "json").stdout)
    assert sorted(h["name"] for h in status["hosts"]) == ["host1", "host2", "host3"]
    assert json.loads(run(topo, "status", "--json").stdout)["config_version"] == status["config_version"]
    got = json.loads(run(topo, "get", "-o", "json").stdout)
    assert got["version"] == 2 and [s["name"] for s in got["doc"]["services"]] == ["a", "b", "c"]
    hist = json.loads(run(topo, "history", "-o", "json").stdout)
    assert [v["version"] for v in hist["versions"]] == [2, 1]
    ver = json.loads(run(topo, "version", "-o", "json").stdout)
    assert ver["client"]["version"] == ver["control_plane"]["version"]
    assert sorted(p["host"] for p in ver["proxies"]) == ["host1", "host2", "host3"]
    for p in ver["proxies"]:  # each proxy's own word: its release, wire version and compiled hot path
        assert (p["version"], p["wire"], p["build"]) == (ver["client"]["version"], 1, "mypyc"), p
    # Tables are for people; their times are UTC, written with a Z.
    table = run(topo, "history").stdout
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", table), table
    assert "when (UTC)" in table


def test_apply_from_stdin_with_wait_returns_once_in_force(topo: Topo) -> None:
    text = with_c(topo.yaml())
    r = run(topo, "apply", "-f", "-", "--wait", stdin=text)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"applied: version 2 \(sha256 [0-9a-f]{12}\)", lines[-2]), lines
    assert re.fullmatch(r"in force on 3 hosts after \d+\.\d s", lines[-1]), lines
    # At once, not eventually: host1's proxy serves the snapshot that withholds c.
    want = topo.cp.snapshot("host1")
    assert "c" in want.get("withheld_services", [])
    assert topo.h1.ready()["snapshot_version"] == want["version"]
    # The same file again: nothing to wait for, and -o json says so.
    r = run(topo, "apply", "-f", "-", "--wait", "-o", "json", stdin=text)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["changed"] is False and doc["version"] == 2 and sorted(doc["in_force"]["hosts"]) == [
        "host1", "host2", "host3"]


def test_apply_wait_names_the_host_that_is_down_exit_6(topo: Topo) -> None:
    topo.h3.stop()
    changed = topo.yaml().replace("    port: 18080\n", "    port: 18080\n    health: {tcp: true, interval_ms: 1500}\n")
    assert changed != topo.yaml()
    r = run(topo, "apply", "-f", "-", "--wait", "--timeout", "3", stdin=changed)
    assert r.returncode == 6, (r.stdout, r.stderr)
    assert r.stdout.splitlines()[-1].startswith("applied: version 2")  # applied, not in force everywhere
    err = r.stderr.strip()
    assert err.startswith("error: version 2 applied, but not in force everywhere after 3 s: host3 (runs v"), err
    assert "host2" not in err and len(r.stderr.splitlines()) == 1


def test_apply_wait_stops_at_a_host_that_rejects_exit_4(topo: Topo) -> None:
    # host1's outbound listener for a pinned to a port some other process holds: host1 rejects the snapshot.
    holder = socket.create_server((topo.h1.ip, 0))
    port = holder.getsockname()[1]
    try:
        pinned = topo.yaml().replace(f'address: "{topo.h1.ip}:4143", services: [a]',
                                     f'address: "{topo.h1.ip}:4143", services: [a], '
                                     f'outbound: {{a: "{topo.h1.ip}:{port}"}}')
        assert pinned != topo.yaml()
        r = run(topo, "apply", "-f", "-", "--wait", "--timeout", "20", stdin=pinned)
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert re.match(r"error: version \d+ applied, but host host1 rejected snapshot v\d+: .*Address already in use", r.stderr), r.stderr
    finally:
        holder.close()


def test_exit_statuses_a_script_can_branch_on(topo: Topo, tmp_path: Path) -> None:
    same = tmp_path / "same.yaml"
    same.write_text(topo.yaml())
    changed = tmp_path / "changed.yaml"
    changed.write_text(with_c(topo.yaml()))
    bad = tmp_path / "bad.yaml"
    bad.write_text(topo.yaml().replace("  - name: a\n", "  - name: a\n    wieght: 1\n"))

    r = run(topo, "diff", "-f", str(same))
    assert r.returncode == 0 and "no changes against version 1" in r.stdout, r
    r = run(topo, "diff", "-f", str(changed))
    assert r.returncode == 1 and "+- name: c" in r.stdout, r
    r = run(topo, "diff", "-f", "-", stdin=changed.read_text())
    assert r.returncode == 1, r
    r = run(topo, "apply", "-f", str(bad))
    assert r.returncode == 3, r
    assert r.stderr.splitlines() == [f"{bad}:3: services[0].wieght: Object contains unknown field wieght",
                                     f"{bad}: 1 problem, nothing applied"]
    r = run(topo, "apply", "-f", "-", stdin="services: [\n")
    assert r.returncode == 3 and r.stderr.startswith("<stdin>:"), r
    r = run(topo, "rollback", "99")  # the control plane answers: no such version
    assert r.returncode == 4 and r.stderr.startswith("error: "), r
    r = run(topo, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read "), r
    r = run(topo, "apply", "--frob")
    assert r.returncode == 2 and r.stderr.startswith("error: No such option '--frob' (see `glassmesh apply --help`)")
    r = run(topo, "status", env={"GLASSMESH_CREDENTIAL": str(tmp_path / "nope.pem")})
    assert r.returncode == 2 and r.stderr.startswith("error: cannot read the operator credential"), r
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"https://127.0.0.1:{s.getsockname()[1]}"
    r = run(topo, "status", env={"GLASSMESH_CONTROL": dead})
    assert r.returncode == 5 and r.stderr.startswith("error: cannot reach the control plane"), r
    r = run(topo, "version", env={"GLASSMESH_CONTROL": dead})
    assert r.returncode == 5 and r.stdout.startswith("client         glassmesh "), r  # the client's part still
    # Every failure above is one line on stderr, prefixed the same way, and never a traceback.
    help_text = run(topo, "--help").stdout
    listed = [line.split() for line in help_text.split("Exit statuses:")[1].splitlines() if line.strip()]
    assert [int(words[0]) for words in listed] == [0, 1, 2, 3, 4, 5, 6], help_text
    assert " ".join(listed[5][1:]) == "no control-plane replica could be reached or could answer"


def test_h_is_help_everywhere(topo: Topo) -> None:
    for args in ([], ["apply"], ["host", "list"], ["control"], ["proxy"]):
        short, long_ = run(topo, *args, "-h"), run(topo, *args, "--help")
        assert short.returncode == 0 and short.stdout == long_.stdout and "Usage: glassmesh" in short.stdout, args


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("glassmesh", path=env["PATH"]), "the glassmesh entry point is next to the test's python"

    def complete(*words: str) -> list[str]:
        script = ("source <(glassmesh completion bash)\n"
                  f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}\n"
                  # bash calls it with the command, the word being completed and the one before it
                  f"_glassmesh_completion glassmesh {words[-1]} {words[-2]}\n"
                  'printf "%s\\n" "${COMPREPLY[@]}"\n')
        r = subprocess.run([bash, "-c", script], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert complete("glassmesh", "ap") == ["apply"]
    assert "history" in complete("glassmesh", "h") and "host" in complete("glassmesh", "h")
    assert "--wait" in complete("glassmesh", "apply", "--w")
    for shell in ("zsh", "fish"):
        r = subprocess.run([*CLI, "completion", shell], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "_GLASSMESH_COMPLETE" in r.stdout, (shell, r.stderr)


def test_control_plane_logs_in_utc(topo: Topo) -> None:
    assert topo.cp.proc is not None
    wait_for(lambda: topo.cp.proc is not None and topo.cp.proc.log_text().strip() != "", 5, "a log line")
    first = topo.cp.proc.log_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|WARNING|DEBUG) ", first), first
