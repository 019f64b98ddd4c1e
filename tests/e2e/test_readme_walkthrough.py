"""README "Put your own services in the mesh", run as a user runs it, and checked against what it says.

The files (mesh.yaml, api.py, nginx.conf) are taken from the README itself;
the commands are the README's, run from a working directory with the
`glassmesh` of this environment, real nginx, gunicorn and redis-server, and
real curl and redis-cli. The only changes: the README's 127.0.0.21-23 become
random loopback addresses, and the control plane listens on free ports
(the CLI finds it through GLASSMESH_CONTROL) so that tests never collide.
What each command prints is asserted as the README shows it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.harness import REPO, Mesh, Proc, fresh_ip, wait_port
from tests.e2e.test_control_join import free_port

README = REPO / "README.md"
SECTION = "## Put your own services in the mesh"
BIN = Path(sys.executable).parent


def section() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    return text[start:text.index("\n## ", start + len(SECTION))]


def readme_file(name: str) -> str:
    """A file the README shows whole: a code block whose first line is `# NAME`."""
    m = re.search(rf"```\w*\n(# {re.escape(name)}\n.*?)```", section(), re.S)
    assert m, f"the README section has no block for {name}"
    return m.group(1)


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def logged(line: str) -> str:
    """A log line the README shows, as a pattern: its example UTC time stands for any."""
    t, rest = line.split(" ", 1)
    assert re.fullmatch(STAMP, t), line
    return "^" + STAMP + " " + re.escape(rest)


def readme_block_with(needle: str) -> list[str]:
    """The lines of the README section's code block that contains `needle`."""
    for m in re.finditer(r"```\w*\n(.*?)```", section(), re.S):
        if needle in m.group(1):
            return m.group(1).splitlines()
    raise AssertionError(f"no block with {needle!r} in the README section")


class Walkthrough:
    """A working directory, three loopback hosts, and the README's commands run in it."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.dir = mesh.root / "mesh-try"
        self.dir.mkdir()
        self.ips = {"127.0.0.21": fresh_ip(), "127.0.0.22": fresh_ip(), "127.0.0.23": fresh_ip()}
        self.ip1, self.ip2, self.ip3 = self.ips.values()
        self.api_port, self.proxy_port, self.insecure_port = free_port(), free_port(), free_port()
        self.control_url = f"https://127.0.0.1:{self.api_port}"
        self.procs: dict[str, Proc] = {}

    def sub(self, text: str) -> str:
        """The README's addresses made this test's."""
        for readme_ip, ip in self.ips.items():
            text = text.replace(readme_ip, ip)
        return text

    def argv(self, cmd: list[str]) -> list[str]:
        exe = BIN / cmd[0]
        return [str(exe) if exe.exists() else cmd[0], *cmd[1:]]

    def run(self, cmd: str) -> subprocess.CompletedProcess[str]:
        """A command that ends, as the README writes it, with this test's addresses."""
        # The README's `export GLASSMESH_CREDENTIAL=$PWD/control/admin.pem`.
        env = {**os.environ, "GLASSMESH_CONTROL": self.control_url, "COLUMNS": "80",
               "GLASSMESH_CREDENTIAL": str(self.dir / "control" / "admin.pem")}
        return subprocess.run(self.argv(shlex.split(self.sub(cmd))), cwd=self.dir, env=env, capture_output=True,
                              text=True, timeout=60)

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
        """A long-running command (the README's `... &`), in the working directory, stopped by PID."""
        p = self.mesh.spawn(name, ["sh", "-c", 'cd "$0" && exec "$@"', str(self.dir), *self.argv(cmd)], env)
        self.procs[name] = p
        return p

    def start_line(self, line: str, name: str | None = None) -> Proc:
        """A README line `[VAR=x] [mkdir D &&] CMD ARGS &`, started as the shell would (named `CMD hostN`)."""
        words = shlex.split(self.sub(line.removesuffix(" &")).replace('"$PWD', f'"{self.dir}'))
        if words[:3] == ["mkdir", words[1], "&&"]:
            (self.dir / words[1]).mkdir()
            words = words[3:]
        env = {}
        while "=" in words[0]:
            k, _, v = words.pop(0).partition("=")
            env[k] = v
        return self.start(name or " ".join([words[0], *env.values()]), words, env)

    def log(self, name: str) -> str:
        return self.procs[name].log_path.read_text(errors="replace")

    def wait_log(self, name: str, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log(name), re.M)
            if m:
                return m
            if not self.procs[name].alive() or time.monotonic() > deadline:
                raise AssertionError(f"{name} never printed {pattern!r}:\n{self.log(name)}")
            time.sleep(0.1)

    def status_lines(self) -> list[str]:
        r = self.run("glassmesh status")
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    def curl(self, path: str = "/hello") -> dict:  # type: ignore[type-arg]
        r = self.run(f"curl -s http://127.0.0.21:8080{path}")
        assert r.returncode == 0 and r.stdout.startswith("{"), (r.returncode, r.stdout, r.stderr)
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def mode(self, rel: str) -> int:
        return stat.S_IMODE((self.dir / rel).stat().st_mode)


def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_readme_walkthrough(mesh: Mesh) -> None:
    w = Walkthrough(mesh)

    # 1. The control plane (on free ports instead of the defaults 4200 and 4201).
    w.start("control", ["glassmesh", "control", "--data", "control", "--listen", f"127.0.0.1:{w.api_port}",
                        "--proxy-listen", f"127.0.0.1:{w.proxy_port}"])
    wait_port(f"127.0.0.1:{w.proxy_port}", w.procs["control"])
    (export,) = [x for x in readme_block_with("glassmesh control --data control &") if x.startswith("export")]
    assert export == "export GLASSMESH_CREDENTIAL=$PWD/control/admin.pem"
    w.wait_log("control", r"^\S+Z INFO glassmesh control: wrote the first operator's credential \(admin\) to "
                          r"control/admin\.pem; copy it to ~/\.config/glassmesh/operator\.pem, or set "
                          r"GLASSMESH_CREDENTIAL=control/admin\.pem$")
    w.wait_log("control", rf"^\S+Z INFO glassmesh control: operator API on https://127\.0\.0\.1:{w.api_port} \(TLS; an "
                          r"operator credential is required\)$")
    fp = w.wait_log("control", rf"^\S+Z INFO glassmesh control: proxies join and watch on https://127\.0\.0\.1:{w.proxy_port} "
                               r"\(mutual TLS, CA sha256 ([0-9a-f]{64})\)$").group(1)
    assert (w.dir / "control" / "ca" / "ca.pem").exists()

    # 2. mesh.yaml: first with the README's three mistakes, then as written.
    good = w.sub(readme_file("mesh.yaml"))
    bad = (good.replace("calls: [api, cache]", "calls: [api, cahce]")
           .replace("    health: {http: /healthz}\n    calls", "    helth: {http: /healthz}\n    calls")
           .replace(f'host3, address: "{w.ip3}:4143"', f'host3, address: "{w.ip2}:4143"'))
    (w.dir / "mesh.yaml").write_text(bad)
    r = w.run("glassmesh apply -f mesh.yaml")
    assert r.returncode == 3 and r.stdout == ""
    assert r.stderr.splitlines() == [w.sub(x) for x in readme_block_with("problems, nothing applied")]
    (w.dir / "mesh.yaml").write_text(good)
    r = w.run("glassmesh apply -f mesh.yaml")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"applied: version 1 \(sha256 [0-9a-f]{12}\)", r.stdout.splitlines()[-1])

    # 3. The apps: api.py under gunicorn on host2 and host3, redis on host3, nginx as web on host1.
    (w.dir / "api.py").write_text(readme_file("api.py"))
    (w.dir / "nginx.conf").write_text(w.sub(readme_file("nginx.conf")))
    for line in readme_block_with("redis-server --bind"):
        w.start_line(line)
    for addr, name in ((f"{w.ip2}:9000", "gunicorn host2"), (f"{w.ip3}:9000", "gunicorn host3"),
                       (f"{w.ip3}:6379", "redis-server"), (f"{w.ip1}:8080", "nginx")):
        wait_port(addr, w.procs[name])

    # 4. Join each host with the command `glassmesh host add` prints.
    for host, services in (("host1", "web"), ("host2", "api"), ("host3", "api,cache")):
        r = w.run(f"glassmesh host add {host} --services {services} --data {host}")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert re.fullmatch(rf"join token for host {host} \(may serve: {services.replace(',', ', ')}\); single use, "
                            r"expires \S+Z \(in 60 min\):", lines[0]), lines
        token = lines[1].strip()
        assert lines[2] == "start its proxy with:"
        assert lines[3] == (f"  glassmesh proxy --control https://127.0.0.1:{w.proxy_port} --join {token} "
                            f"--ca-sha256 {fp} --data {host}")
        w.start(f"proxy {host}", shlex.split(lines[3]))
    for host, services in (("host1", "web"), ("host2", "api"), ("host3", "api, cache")):
        w.wait_log(f"proxy {host}", rf"^\S+Z INFO glassmesh proxy: joined as host {host} "
                                    rf"\(spiffe://glassmesh\.local/host/{host}\); may serve: {services}$")
        for svc in services.split(", "):
            w.wait_log(f"proxy {host}", rf"^\S+Z INFO glassmesh proxy: certificate for service {svc} issued, valid until ")
    (serving,) = [x for x in readme_block_with("joined as host host1") if "serving snapshot" in x]
    w.wait_log("proxy host1", logged(w.sub(serving)).replace("version\\ 4", r"version\ \d+")
               .replace("mypyc", r"\w+") + "$")
    assert w.mode("host1/certs/web.key") == 0o600 and w.mode("host1/identity") == 0o700
    assert (w.dir / "host1/certs/ca.pem").read_bytes() == (w.dir / "control/ca/ca.pem").read_bytes()

    # 5. status: every host on the latest snapshot; then curl through nginx, redis-cli over the tcp link.
    def in_sync(lines: list[str]) -> bool:  # the README's table: each host runs the latest version
        return all(re.fullmatch(rf" host{i}  +(\d+)  +\1  +\d+s  +\d+s", lines[3 + i]) for i in (1, 2, 3))

    until(lambda: in_sync(w.status_lines()), "every host on its latest snapshot")
    lines = w.status_lines()
    assert lines[2:4] == ["hosts", " host   running  latest  snapshot age  last seen  last reject"], lines
    assert lines[-2] == "held changes: none", lines
    assert re.fullmatch(r"outage budget: 24\.0 h \(earliest certificate expiry \S+Z\)", lines[-1]), lines

    def answered_by(wanted: set[str]) -> Callable[[], bool]:
        seen: set[str] = set()

        def check() -> bool:
            got = w.curl()
            if "error" in got:  # the mesh's own answer (no healthy endpoint yet): try again
                return False
            assert got["service"] == "api" and got["path"] == "/hello"
            assert got["caller"] == "spiffe://glassmesh.local/service/web"
            seen.add(got["host"])
            return seen == wanted

        return check

    until(answered_by({"host2", "host3"}), "api answered by host2 and host3")
    r = w.run("curl -si http://127.0.0.21:8080/hello")
    assert re.search(r"^glassmesh-trail: host1/outbound;dur=[\d.]+, host[23]/inbound;dur=[\d.]+\r?$", r.stdout, re.M)
    assert w.run("redis-cli -h 127.0.0.21 -p 16379 set greeting hello").stdout == "OK\n"
    assert w.run("redis-cli -h 127.0.0.21 -p 16379 get greeting").stdout == "hello\n"

    # 6. api on host1 too: its certificate comes by itself, its listener is bound without a restart.
    (line,) = readme_block_with("API_HOST=host1 gunicorn")
    w.start_line(line)
    wait_port(f"{w.ip1}:9000", w.procs["gunicorn host1"])
    (w.dir / "mesh.yaml").write_text(good.replace(f'address: "{w.ip1}:4143", services: [web]}}',
                                                  f'address: "{w.ip1}:4143", services: [web, api]}}'))
    r = w.run("glassmesh apply -f mesh.yaml")
    assert r.returncode == 0 and "applied: version 2" in r.stdout, r.stderr
    w.wait_log("proxy host1", r"^\S+Z INFO glassmesh proxy: certificate for service api issued, valid until ")
    (added,) = readme_block_with("listeners added: api outbound")
    w.wait_log("proxy host1", logged(w.sub(added)) + "$")
    assert (w.dir / "host1/certs/api.pem").exists() and w.mode("host1/certs/api.key") == 0o600
    assert re.search(r"^ host1 +web, api \(config\) ", w.run("glassmesh host list").stdout, re.M)
    until(answered_by({"host1", "host2", "host3"}), "api answered by host1, host2 and host3")
    until(lambda: in_sync(w.status_lines()), "every host on the latest snapshot again")
    assert "rejected" not in w.procs["proxy host1"].log_text()

    # Without joining: certificate files from the control plane's own CA, ca.pem included.
    r = w.run("glassmesh ca issue --dir control/ca --service web --out host9/certs/web")
    assert r.returncode == 0, r.stderr
    assert w.mode("host9") == 0o700 and w.mode("host9/certs") == 0o700 and w.mode("host9/certs/web.key") == 0o600
    assert (w.dir / "host9/certs/ca.pem").read_bytes() == (w.dir / "host1/certs/ca.pem").read_bytes()


def test_hand_issued_certificates_make_a_working_certs_dir(mesh: Mesh) -> None:
    """The README's way without joining: `ca issue --dir control/ca --out DIR/certs/SVC`, then a proxy over http://.

    Before, `--out` into a missing certs/ failed, and a certs/ made by hand
    lacked ca.pem (`cannot load trust bundle`). Here the proxy starts from
    exactly what `ca issue` wrote and carries a request over mutual TLS.
    """
    w = Walkthrough(mesh)
    ip = w.ip1
    w.start("control", ["glassmesh", "control", "--data", "control", "--listen", f"127.0.0.1:{w.api_port}",
                        "--proxy-listen", f"127.0.0.1:{w.proxy_port}",
                        "--insecure-proxy-listen", f"127.0.0.1:{w.insecure_port}"])
    wait_port(f"127.0.0.1:{w.api_port}", w.procs["control"])
    wait_port(f"127.0.0.1:{w.insecure_port}", w.procs["control"])
    (w.dir / "mesh.yaml").write_text(f"services:\n  - {{name: web, calls: [api]}}\n  - {{name: api, port: 9000}}\n"
                                     f"hosts:\n  - {{name: solo, address: \"{ip}:4143\", services: [web, api]}}\n")
    assert w.run("glassmesh apply -f mesh.yaml").returncode == 0
    (line,) = readme_block_with("glassmesh ca issue --dir control/ca")
    assert line == "glassmesh ca issue --dir control/ca --service web --out host1/certs/web"
    for svc in ("web", "api"):
        r = w.run(line.replace("web", svc).replace("host1", "solo"))
        assert r.returncode == 0, r.stderr
        assert "  trust:       solo/certs/ca.pem (the CA's root, SHA256 " in r.stdout
    assert sorted(p.name for p in (w.dir / "solo/certs").iterdir()) == ["api.key", "api.pem", "ca.pem", "web.key",
                                                                        "web.pem"]
    mesh.start_app("http", f"{ip}:9000", "api-solo")
    w.start("proxy solo", ["glassmesh", "proxy", "--control", f"http://127.0.0.1:{w.insecure_port}", "--host",
                           "solo", "--data", "solo"])
    w.wait_log("proxy solo", r"^\S+Z INFO glassmesh proxy: host solo serving snapshot version \d+: ")

    def called() -> bool:
        r = w.run(f"curl -s -H 'Host: api' http://{ip}:4140/hi")  # a mesh error (no endpoints yet) has no headers
        return r.stdout.startswith("{") and ["glassmesh-source", "spiffe://glassmesh.local/service/web"] in \
            json.loads(r.stdout).get("headers", [])

    until(called, "web calling api through solo's proxy over mutual TLS")
