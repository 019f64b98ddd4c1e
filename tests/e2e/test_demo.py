"""`glassmesh demo` end to end: the real command, its control plane, proxies and apps, an instance bounced.

Runs on the demo's fixed addresses (127.0.0.11-13, the control plane on
127.0.0.1:4200), as `make demo` does, and reads only what it prints, so the
test fails when what a user sees is wrong.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]
DEMO_ADDRESSES = [("127.0.0.1", 4200), ("127.0.0.11", 4140), ("127.0.0.11", 4143), ("127.0.0.11", 4191),
                  ("127.0.0.11", 8080), ("127.0.0.12", 4143), ("127.0.0.12", 8080), ("127.0.0.13", 4143),
                  ("127.0.0.13", 8080), ("127.0.0.13", 8081), ("127.0.0.14", 4143), ("127.0.0.14", 8080)]


def _served_by(line: str) -> dict[str, int]:
    m = re.search(r"served by (.*)$", line)
    assert m, line
    if m.group(1).strip() == "-":
        return {}
    return {h: int(n) for h, n in (part.split() for part in m.group(1).split(", "))}


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def test_demo_runs_through_the_control_plane_and_bounces_an_instance(tmp_path: Path, demo_addresses: None) -> None:
    state = tmp_path / "state"
    # The user's own config dir, empty: the demo puts its operator credential there, where the CLI looks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLASSMESH_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="250", XDG_CONFIG_HOME=str(tmp_path / "config"))
    demo = subprocess.Popen([*CLI, "demo", "--duration", "15", "--state-dir", str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    got: list[str] = []
    status: subprocess.CompletedProcess[str] | None = None
    tap: subprocess.CompletedProcess[str] | None = None
    trace: subprocess.CompletedProcess[str] | None = None
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            got.append(line)
            hint = re.search(r"across the hops: (?:\S+ )+?trace ([0-9a-f]{24})$", line.strip())
            if trace is None and hint:  # the request the live view names, followed as it says
                trace = subprocess.run([*CLI, "trace", hint.group(1), "-o", "json"], env=env, capture_output=True,
                                       text=True, timeout=60)
            if status is None and "instances registered and healthy" in line:
                # While it runs, `glassmesh status` works with no flag and no variable: nothing but the demo.
                status = subprocess.run([*CLI, "status"], env=env, capture_output=True, text=True, timeout=60)
                # ... and so does the intro's tap: A's calls to B, here as B's proxies see them arrive.
                tap = subprocess.run([*CLI, "tap", "--from", "a", "--to", "b", "--side", "inbound", "--count", "6",
                                      "--seconds", "20", "-o", "json"], env=env, capture_output=True, text=True,
                                     timeout=60)
        code = demo.wait(180)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    out = "".join(got)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((state / "logs").glob("*.log")))
    assert code == 0, f"{out}\n{logs}"
    lines = out.splitlines()
    assert status is not None and status.returncode == 0, status
    assert "host1" in status.stdout and "host3" in status.stdout, status.stdout
    assert tap is not None and tap.returncode == 0, tap
    events = [e for e in map(json.loads, tap.stdout.splitlines()) if "method" in e]
    assert len(events) == 6 and {(e["from"], e["to"]) for e in events} == {("a", "b")}, tap.stdout
    assert {e["side"] for e in events} == {"inbound"} and {e["host"] for e in events} <= {"host2", "host3", "host4"}
    assert "tap --from a --to b --headers" in out and "capture --link a:b" in out  # the hints
    assert "look inside: glassmesh tap --from a --to b --headers   |   glassmesh capture --link a:b" in out
    assert "trace REQUEST_ID" in out and "glassmesh links" in out.replace(f"{sys.executable} -c ", "")
    assert trace is not None and trace.returncode == 0, (trace, out)
    hops = {(h["host"], h["side"]) for h in json.loads(trace.stdout)["timeline"]["hops"]}
    assert ("host1", "outbound") in hops and hops & {("host2", "inbound"), ("host3", "inbound"),
                                                     ("host4", "inbound")}, trace.stdout

    # Set up through the control plane, as an operator, with hosts that join with tokens.
    assert "control plane up on https://127.0.0.1:4200" in out
    cred = tmp_path / "config" / "glassmesh" / "operator.pem"
    assert f"copied to {cred}, where `glassmesh` finds it" in out, out
    assert oct(cred.stat().st_mode & 0o777) == "0o600"
    assert "--join TOKEN" in out
    assert f"applied {state}/mesh.yaml: config version 1" in out
    assert "instances registered and healthy" in out
    assert "glassmesh status" in out  # the hint
    assert (state / "mesh.yaml").is_file() and (state / "control" / "control.sqlite").is_file()
    for h in ("host1", "host2", "host3", "host4"):  # each proxy kept its last-known-good snapshot from the control plane
        assert (state / h / "snapshot.json").is_file() and (state / h / "certs" / "ca.pem").is_file()

    # B on host2 stopped, its traffic on host3 alone, then back.
    def index(pattern: str) -> int:
        found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert found, f"no line matches {pattern!r}:\n{out}"
        return found[0]

    stopping = index(r">>> stopping b on host2 \(pid \d+")
    out_at = index(r">>> b on host2 is out: snapshot v\d+ pushed to host1")
    starting = index(r">>> starting b on host2 again \(pid \d+\)")
    back = index(r">>> b on host2 is back: .*snapshot v\d+ pushed to host1")
    assert stopping < out_at < starting < back
    pushes = [line for line in lines if "control plane pushed snapshot v" in line]
    assert any("to host1: b now host3, host4 (was host2, host3, host4)" in p for p in pushes), pushes
    assert any("to host1: b now host2, host3, host4 (was host3, host4)" in p for p in pushes), pushes
    ab = [(i, line) for i, line in enumerate(lines) if re.match(r"\[\s*\d+s\] a -> b ", line)]
    while_out = [_served_by(line) for i, line in ab if out_at < i < starting]
    # "served by" counts the last second: the first line after the push may still hold host2's last answers.
    assert len(while_out) >= 2 and all(set(s) <= {"host3", "host4"} for s in while_out[1:]), while_out
    after = [_served_by(line) for i, line in ab if i > back]
    assert any(s.get("host2") for s in after), after  # the traffic splits again
    assert all("success 100.0%" in line or "no traffic seen yet" in line for _, line in ab), out

    # The summary: no failed request, both instances of b served, the bounce reported.
    summary = lines[index(r"^summary \(")]
    assert summary
    ab_total = lines[index(r"^  a -> b: \d+ requests")]
    served = _served_by(ab_total)
    assert served.get("host2", 0) > 0 and served.get("host4", 0) > 0, ab_total
    assert "success 100.0%" in ab_total
    assert re.search(r"client -> a \(traffic generator\): (\d+) done, \1 ok, 0 failed", out), out
    assert re.search(r"^  failed requests: 0 \(0 of \d+ client -> a, 0 of \d+ a -> b, 0 of \d+ a -> c\)",
                     out, re.M), out
    assert re.search(r"^  b on host2: stopped at [\d.]+ s \(pid \d+\), out of host1's snapshot [\d.]+ s later "
                     r"\(v\d+\), started at [\d.]+ s \(pid \d+\), back in host1's snapshot", out, re.M), out
    assert "exited during the run" not in out and "did not run clean" not in out

    # The canary: v2 (host3) at 0%, then 1%, 10% and 50% of A's calls to B, each by `glassmesh apply`.
    for pct, version in ((1, 2), (10, 3), (50, 4)):
        apply_at = index(rf">>> canary: b v2 to {pct}% of A's calls: glassmesh apply -f mesh.yaml")
        applied = index(rf">>> applied: version {version} \(sha256 ")
        runs = index(rf">>> host1's proxy runs the {pct}% split: snapshot v\d+, [\d.]+ s after the apply")
        assert apply_at < applied and apply_at < runs
    assert any("b split v1 99%, v2 1% (was v1 100%, v2 0%)" in p for p in pushes), pushes
    live = [line for _, line in ab if "subsets" in line]
    assert live and all(re.search(r"subsets (v1 \d+|v2 \d+|-)", line) for line in live), live
    phases: dict[int, tuple[int, int]] = {}
    for m in re.finditer(r"^    v2 at (\d+)% \(.*?\): (.*)$", out, re.M):
        counts = {k: int(n) for k, n in re.findall(r"(v[12]) (\d+) \(", m.group(2))}
        phases[int(m.group(1))] = (counts.get("v1", 0), counts.get("v2", 0))
    assert sorted(phases) == [0, 1, 10, 50], out
    v1, v2 = phases[0]
    assert v1 > 50 and v2 <= 1, phases  # 0%: v2 idle (one request at most, counted as its first push landed)
    v1, v2 = phases[50]
    assert v1 + v2 > 50 and 0.25 < v2 / (v1 + v2) < 0.75, phases
    v1, v2 = phases[10]
    assert v1 + v2 > 50 and v2 / (v1 + v2) < 0.3, phases

    # Every process stopped, the control plane included: the demo's addresses are free again.
    assert re.search(r"^stopped \d+ processes", out, re.M), out
    busy = [f"{ip}:{port}" for ip, port in DEMO_ADDRESSES if not _bindable(ip, port)]
    assert busy == [], busy
