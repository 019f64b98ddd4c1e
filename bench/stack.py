"""The benchmark's processes: certificates, rendered configs, start, readiness, stop.

Every process is started in its own session (so a Ctrl-C on the terminal reaches only the
runner, which then stops everything in order) and is stopped by its PID's process group,
never by name: the machine may run other nginx/haproxy/python processes that are not ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
TOOLS = HERE / "tools"
TRUST_DOMAIN = "glassmesh.local"

# All on 127.0.0.1. Peers keep peer-bench's numbering; glassmesh has its own block. The demo uses
# 127.0.0.11-13 with 4140/4143/4191/8080/8081, so nothing here collides with a running demo.
BASE_PORTS = {
    "UP": 18080, "TCPSRC": 19000,
    "NGX_OUT": 18101, "NGX_IN": 18102, "NGX_TOUT": 19101, "NGX_TIN": 19102,
    "HAP_OUT": 18201, "HAP_IN": 18202, "HAP_TOUT": 19201, "HAP_TIN": 19202,
    # glassmesh: bout = the caller's host (outbound side), bin = the app's host (inbound side).
    "GM_OUT": 18401, "GM_IN": 18402, "GM_ADMIN_IN": 18403,
    "GM_OUT_INBOUND": 18404, "GM_ADMIN_OUT": 18405, "GM_TOUT": 19401,
}


def ports(offset: int = 0) -> dict[str, int]:
    return {k: v + offset for k, v in BASE_PORTS.items()}


@dataclass
class Config:
    """One way of getting from the client to the app (a column of the table)."""

    name: str
    label: str
    http_port: int
    tcp_port: int | None
    proxies: list[str] = field(default_factory=list)       # process names serving HTTP
    tcp_proxies: list[str] = field(default_factory=list)   # process names serving the TCP link
    failed: str | None = None                               # the whole column failed
    row_failed: dict[str, str] = field(default_factory=dict)  # row -> why it cannot run (e.g. "big", "tcp")
    note: str = ""


def log(*a: object) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class Procs:
    """Processes we started, by name; stopped by PID (process group = own session)."""

    def __init__(self, run_dir: Path):
        self.run = run_dir
        self.p: dict[str, subprocess.Popen] = {}
        self.transient: set[subprocess.Popen] = set()

    def start(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        f = open(self.run / f"{name}.log", "w")
        p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env, cwd=self.run)
        f.close()
        self.p[name] = p
        return p

    def run_bounded(self, argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str]:
        """A load generator: own session, killed by PID when it overruns or we are interrupted."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             text=True, start_new_session=True, env=env)
        self.transient.add(p)
        try:
            out, err = p.communicate(timeout=timeout)
            return p.returncode, out, err
        except subprocess.TimeoutExpired:
            _kill_group(p)
            out, err = p.communicate()
            return -9, out, (err or "") + f"\n[bench] killed after {timeout:.0f}s"
        finally:
            if p.poll() is None:
                _kill_group(p)
            self.transient.discard(p)

    def alive(self, name: str) -> bool:
        return name in self.p and self.p[name].poll() is None

    def log_tail(self, name: str, n: int = 6) -> str:
        try:
            lines = (self.run / f"{name}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-n:])

    def stop(self, names: list[str]) -> None:
        procs = [self.p[n] for n in names if n in self.p]
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _kill_group(p, signal.SIGKILL)
                p.wait(2)

    def stop_all(self) -> None:
        for p in list(self.transient):
            _kill_group(p, signal.SIGKILL)
        self.stop(list(self.p))


def _kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)        # p is a session leader: its pgid is its pid
    except (ProcessLookupError, PermissionError):
        pass


def check_ports_free(pp: dict[str, int]) -> None:
    busy = []
    for name, port in pp.items():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # TIME_WAIT leftovers are fine
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            busy.append(f"{port} ({name})")
        finally:
            s.close()
    if busy:
        raise SystemExit("bench: ports already in use on 127.0.0.1: " + ", ".join(busy)
                         + "\n  another bench or peer-bench running? stop it, or set PORT_OFFSET=1000")


def wait_port(port: int, until: float) -> bool:
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# ---------------------------------------------------------------- certificates

def make_certs(d: Path, names: list[str]) -> str:
    """CA + one leaf per service name, ECDSA P-256, SPIFFE URI SAN + DNS SAN = name.

    Files: ca.crt, <name>.crt, <name>.key, <name>.pem (cert + key, for HAProxy).
    Uses glassmesh's own CA library when it is there, openssl otherwise; returns which.
    """
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    how = "glassmesh.ca"
    try:
        _certs_glassmesh(d, names)
    except Exception as e:  # noqa: BLE001 - any failure of the library means: use openssl
        how = f"openssl (glassmesh.ca unavailable: {type(e).__name__}: {str(e)[:120]})"
        shutil.rmtree(d)
        d.mkdir(parents=True)
        _certs_openssl(d, names)
    for n in names:
        (d / f"{n}.pem").write_bytes((d / f"{n}.crt").read_bytes() + (d / f"{n}.key").read_bytes())
    return how


def _certs_glassmesh(d: Path, names: list[str]) -> None:
    from glassmesh.ca import init_ca  # noqa: PLC0415 - the project's own CA library

    authority = init_ca(d / "ca", trust_domain=TRUST_DOMAIN, days=7)
    shutil.copyfile(d / "ca" / "ca.pem", d / "ca.crt")
    for n in names:
        cert_path, key_path = authority.issue("service", n, hours=48).write(d / n)   # <n>.pem, <n>.key
        shutil.copyfile(cert_path, d / f"{n}.crt")


def _certs_openssl(d: Path, names: list[str]) -> None:
    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    ossl("req", "-x509", "-new", "-key", "ca.key", "-sha256", "-days", "7", "-subj", "/CN=glassmesh bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", "ca.crt")
    for n in names:
        ossl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{n}.key")
        ossl("req", "-new", "-key", f"{n}.key", "-subj", f"/CN={n}", "-out", f"{n}.csr")
        (d / f"{n}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            f"subjectAltName=URI:spiffe://{TRUST_DOMAIN}/service/{n},DNS:{n}\n")
        ossl("x509", "-req", "-in", f"{n}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "7", "-sha256", "-extfile", f"{n}.ext", "-out", f"{n}.crt")
        (d / f"{n}.csr").unlink()
        (d / f"{n}.ext").unlink()
        os.chmod(d / f"{n}.key", 0o600)


# ---------------------------------------------------------------- configs

def render(name: str, run: Path, certs: Path, pp: dict[str, int]) -> str:
    """Fill a peer config's @PLACEHOLDERS@; written to run/name (@RUN@ = run: pid and log files too)."""
    text = (PEERS / name).read_text().replace("@RUN@", str(run)).replace("@CERTS@", str(certs))
    for k, v in pp.items():
        text = text.replace(f"@{k}@", str(v))
    if "@" in text.replace("@@", ""):
        leftover = [w for w in text.split() if w.count("@") >= 2]
        if leftover:
            raise SystemExit(f"bench: unfilled placeholder in {name}: {leftover[:3]}")
    out = run / name
    out.write_text(text)
    return str(out)


def filler_services(n_endpoints: int, per_service: int = 10, n_hosts: int = 200) -> list[dict]:
    """Services nobody calls in the benchmark, n_endpoints endpoints in all, per_service per service,
    spread over n_hosts hosts (each endpoint is its host's inbound port, as the control plane compiles
    it). Their addresses (127.2.x.y:4143) are never dialed: only the size of the snapshot changes."""
    out: list[dict] = []
    i = 0
    while n_endpoints > 0:
        k = min(per_service, n_endpoints)
        eps = []
        for j in range(k):
            h = (i * per_service + j * 7) % n_hosts
            eps.append({"address": f"127.2.{h // 250}.{h % 250 + 1}:4143", "host": f"h{h}"})
        out.append({"name": f"svc{i}", "protocol": "http", "endpoints": eps})
        n_endpoints -= k
        i += 1
    return out


def glassmesh_snapshots(gm_dir: Path, certs: Path, pp: dict[str, int], *, peer_protocol: str = "mux",
                        filler: list[dict] | None = None, up_address: str | None = None,
                        tcp: bool = True, policy: dict | None = None) -> tuple[Path, Path]:
    """Two hosts: "bout" runs the calling service "client"; "bin" runs "up" (http) and "bulk" (tcp).

    peer_protocol: bout's "peer_protocol". filler: more services in both hosts' `services` (see
    filler_services). up_address: send "up" to this mTLS inbound instead of bin's (e.g. an nginx
    inbound, with peer_protocol "http1"). tcp=False leaves the TCP link out. policy: the traffic
    policy of "up" at bout (its endpoint is labelled version=v1, track=all, for subsets to select).
    """
    gm_dir.mkdir(parents=True, exist_ok=True)
    a = lambda port: f"127.0.0.1:{port}"  # noqa: E731
    rel = os.path.relpath(certs, gm_dir)
    c = lambda f: f"{rel}/{f}"  # noqa: E731
    bin_ep = [{"address": a(pp["GM_IN"]), "host": "bin", **({"labels": {"version": "v1", "track": "all"}}
                                                              if policy else {})}]
    up_ep = [{"address": up_address, "host": "nin"}] if up_address else bin_ep
    filler = list(filler or [])
    bout = {
        "version": 1, "host": "bout", "trust_domain": TRUST_DOMAIN, "trust_bundle": c("ca.crt"),
        "peer_protocol": peer_protocol,
        "inbound": a(pp["GM_OUT_INBOUND"]), "admin": a(pp["GM_ADMIN_OUT"]),
        "local_services": [{"name": "client", "protocol": "http", "instances": [],
                            "outbound": a(pp["GM_OUT"]), "cert": c("client.crt"), "key": c("client.key")}],
        "services": [{"name": "up", "protocol": "http", "endpoints": up_ep, **({"policy": policy} if policy else {})},
                     {"name": "bulk", "protocol": "tcp", "endpoints": bin_ep}] + filler,
        "tcp_links": [{"source": "client", "listen": a(pp["GM_TOUT"]), "destination": "bulk"}] if tcp else [],
    }
    bin_ = {
        "version": 1, "host": "bin", "trust_domain": TRUST_DOMAIN, "trust_bundle": c("ca.crt"),
        "inbound": a(pp["GM_IN"]), "admin": a(pp["GM_ADMIN_IN"]),
        "local_services": [
            {"name": "up", "protocol": "http", "instances": [a(pp["UP"])],
             "cert": c("up.crt"), "key": c("up.key")},
            {"name": "bulk", "protocol": "tcp", "instances": [a(pp["TCPSRC"])],
             "cert": c("bulk.crt"), "key": c("bulk.key")},
        ],
        "services": filler,
        "tcp_links": [],
    }
    p_out, p_in = gm_dir / "bout.json", gm_dir / "bin.json"
    ind = 2 if len(filler) < 100 else None     # a 10,000-endpoint snapshot is written compact
    p_out.write_text(json.dumps(bout, indent=ind) + "\n")
    p_in.write_text(json.dumps(bin_, indent=ind) + "\n")
    return p_out, p_in


def features_policy() -> dict:
    """The features section's traffic policy: 20 routes (the request takes the last), a 1% split, retries
    under a budget, outlier detection (on by default). Both subsets hold the one endpoint: the split runs,
    the endpoint is the same."""
    routes = [{"name": f"r{i}", "match": {"path_prefix": f"/api/v{i}/", "methods": ["POST"]},
               "split": [{"subset": "stable", "weight": 1}]} for i in range(19)]
    routes.append({"name": "canary", "match": {"path_prefix": "/"},
                   "split": [{"subset": "stable", "weight": 99}, {"subset": "canary", "weight": 1}],
                   "retry": {"attempts": 2, "on_status": [503]}})
    return {"subsets": [{"name": "stable", "labels": {"version": "v1"}}, {"name": "canary", "labels": {"track": "all"}}],
            "routes": routes, "retry_budget": {"percent": 20.0, "min_per_second": 10},
            "outlier": {"consecutive_failures": 5}}


def glassmesh_cmd() -> list[str]:
    if os.environ.get("GLASSMESH"):           # another build or wrapper, e.g. GLASSMESH="py-spy record -o p -- glassmesh"
        return os.environ["GLASSMESH"].split()
    exe = Path(sys.executable).parent / "glassmesh"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from glassmesh.cli.main import main; main()"]


def http_get(port: int, path: str = "/", host: str = "up", timeout: float = 5.0):
    """One plain GET; returns (status, headers, body) or raises OSError."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
