"""`glassmesh check` against a running mesh: a healthy one passes, then each problem made for real fails its line.

Real processes: `glassmesh control`, three `glassmesh proxy --control` hosts
and echo apps (the Topo of test_control_watch), and the real `glassmesh`
command run as a script runs it. The problems are real too: host3's proxy
restarted with its clock 90 s ahead (libfaketime, Debian's `faketime`), both
b apps killed so the guard holds the change that would empty b, host1 given
an outbound port another process holds so it rejects its snapshot, and a
replica URL where nothing listens.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess

import pytest

from tests.e2e.harness import PROXY_CMD, Mesh
from tests.e2e.operator import cli_env
from tests.e2e.test_control_ha import Replica
from tests.e2e.test_control_watch import CLI, Control, Topo, free_port, wait_for
from tests.etcd_cluster import EtcdCluster

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


@pytest.fixture
def topo(mesh: Mesh) -> Topo:
    t = Topo(mesh)
    t.up()
    return t


def run(topo: Topo, *args: str, control: str | None = None) -> subprocess.CompletedProcess[str]:
    env = cli_env(control or topo.cp.api_url, topo.cp.cred)
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, env=env, cwd=topo.mesh.root)


def lines_of(stdout: str) -> dict[str, list[str]]:
    """check name -> its line and, for one that is not ok, its fix line."""
    out: dict[str, list[str]] = {}
    last = ""
    for line in stdout.splitlines():
        if line.startswith("      fix: "):
            out[last].append(line.strip())
        elif line[:5].strip() in ("ok", "warn", "fail"):
            last = line[6:].split(": ", 1)[0]
            out.setdefault(last, []).append(line)
    return out


def test_a_healthy_mesh_passes(topo: Topo) -> None:
    wait_for(lambda: all(h["in_sync"] for h in topo.cp.status()["hosts"]), 10, "every host acks")
    r = run(topo, "check")
    assert r.returncode == 0, (r.stdout, r.stderr)
    got = lines_of(r.stdout)
    print(r.stdout)
    for name in ("clocks", "CA certificate", "snapshots", "rejected snapshots", "held changes", "hot path"):
        assert got[name][0].startswith("ok    "), (name, r.stdout)
    # Every proxy's clock is known, though its asks long-poll (which carries none) may be its latest call.
    assert "no reading yet" not in got["clocks"][0], got["clocks"]
    replica = topo.cp.status()["replica"]
    assert got[f"control plane {replica}"][0].startswith(f"ok    control plane {replica}: {topo.cp.api_url} answered")
    assert got[f"certificate of control plane {replica}"][0].startswith("ok    ")
    assert "all 3 host(s) run their latest snapshot" in got["snapshots"][0]
    # Each proxy answers over the ask channel (links, explain and tap reach it), every process on its version.
    assert got["ask channel"][0].startswith("ok    ask channel: 3 proxies answer (3 serving processes)"), r.stdout
    # The proxies here talk plain HTTP to a loopback listener: a warning (with its fix), not a failure.
    assert got["config"][0].startswith("warn  config: host host1 talks to the control plane over plain HTTP")
    assert got["config"][1].startswith("fix: join it with a token")
    assert r.stdout.splitlines()[-1].endswith(" 0 fail")
    doc = json.loads(run(topo, "check", "-o", "json").stdout)
    assert doc["ok"] is True and {c["state"] for c in doc["checks"]} == {"ok", "warn"}


def test_each_problem_fails_its_check_with_a_fix(topo: Topo, mesh: Mesh) -> None:
    cp, h1, h3 = topo.cp, topo.h1, topo.h3
    # host3's clock 90 s ahead: its proxy restarted under libfaketime (the clock it sends is its own).
    h3.stop()
    h3.proxy = mesh.spawn("proxy host3 (+90 s)", [*PROXY_CMD, "--control", cp.url, "--host", "host3",
                                                  "--data", str(h3.data)],
                          env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": "+90s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    h3.wait_ready()
    # Both b apps gone: the change that would empty b is held (status shows it; check fails on it).
    topo.b2.proc.kill()
    assert topo.b3 is not None
    topo.b3.proc.kill()
    wait_for(lambda: cp.status()["held"], 15, "the guard holds b's change")
    # host1's outbound pinned to a port another process holds: host1 rejects its snapshot.
    holder = socket.create_server((h1.ip, 0))
    try:
        port = holder.getsockname()[1]
        cp.apply(topo.yaml().replace(f'address: "{h1.ip}:4143", services: [a]',
                                     f'address: "{h1.ip}:4143", services: [a], outbound: {{a: "{h1.ip}:{port}"}}'))
        wait_for(lambda: next(h for h in cp.status()["hosts"] if h["name"] == "host1")["last_reject"], 15,
                 "host1 rejects")
        dead = f"https://127.0.0.1:{free_port()}"
        r = run(topo, "check", control=f"{dead},{cp.api_url}")
        # Scripts get the same verdicts (while the port is still held: the proxy retries the snapshot it
        # rejected for a local reason, and takes it once the port is free).
        doc = json.loads(run(topo, "check", "-o", "json").stdout)
    finally:
        holder.close()
    print(r.stdout)
    assert r.returncode == 1, (r.stdout, r.stderr)
    got = lines_of(r.stdout)
    assert got[f"control plane {dead}"][0].startswith(f"fail  control plane {dead}: cannot connect")
    assert got[f"control plane {dead}"][1].startswith("fix: start that replica")
    clocks = got["clocks"]
    assert clocks[0].startswith("fail  clocks: host host3 is 9") and "s ahead" in clocks[0], clocks
    assert "NTP" in clocks[1]
    assert "b: " in got["held changes"][0] and got["held changes"][0].startswith("fail  ")
    assert "glassmesh release SERVICE" in got["held changes"][1]
    rej = got["rejected snapshots"][0]
    assert rej.startswith("fail  rejected snapshots: host1 rejected v") and "Address already in use" in rej, rej
    assert "host1 runs v" in got["snapshots"][0] and "(it rejected it" in got["snapshots"][0]
    assert got["instances"][0].startswith("warn  instances: b on host2")
    assert r.stdout.splitlines()[-1].endswith(" 5 fail"), r.stdout
    assert doc["ok"] is False
    assert {c["name"] for c in doc["checks"] if c["state"] == "fail"} == {"clocks", "held changes", "snapshots",
                                                                          "rejected snapshots"}


def test_no_replica_reachable_exits_5(mesh: Mesh) -> None:
    cp = Control(mesh)
    cp.start()  # only for its credential; the check is sent where nothing listens
    dead = f"https://127.0.0.1:{free_port()}"
    r = subprocess.run([*CLI, "check"], capture_output=True, text=True, timeout=60, env=cli_env(dead, cp.cred))
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert r.stdout.startswith(f"fail  control plane {dead}: cannot connect")
    assert r.stderr.startswith("error: no control-plane replica could be asked")


def test_every_replica_is_asked_and_a_dead_one_fails(mesh: Mesh) -> None:
    """Two replicas on a real etcd cluster: given one URL, check finds the other in the store and asks it
    too; once one is SIGKILLed (its record lingers until its lease runs out), check names it, failed."""
    with EtcdCluster.started(size=1) as etcd:
        r1, r2 = Replica(mesh, "r1", etcd.url), Replica(mesh, "r2", etcd.url)
        r1.start()
        r2.start()
        env = cli_env(r1.api_url, r1.cred)

        def check() -> subprocess.CompletedProcess[str]:
            return subprocess.run([*CLI, "check"], capture_output=True, text=True, timeout=60, env=env)

        wait_for(lambda: check().stdout.count("ok    control plane ") == 2, 15, "both replicas answer")
        r = check()
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert f"{r1.api_url} answered" in r.stdout and f"https://127.0.0.1:{r2.port} answered" in r.stdout
        r2.kill()
        r = check()
        print(r.stdout)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert re.search(rf"fail  control plane \S+ \(https://127.0.0.1:{r2.port}\): cannot connect: .* \(the store "
                         rf"lists it as live\)", r.stdout), r.stdout
        assert r.stdout.count("ok    control plane ") == 1
