"""A real 3-member etcd cluster on loopback, for tests that need the etcd store.

Why a real cluster and not a fake: what the etcd store must get right
(compare-and-set across replicas, leases that expire, watches that break
when a member dies, failover without applying a write twice) is exactly
what a fake would get wrong. Debian's `etcd-server` 3.4 starts three
members in about a second when election timing is tuned for loopback.

Use it one of three ways:

    with EtcdCluster.started() as cluster:          # context manager
        store = EtcdStore(cluster.endpoints)        # or: glassmesh control --store cluster.url

    # pytest fixture (module scope): re-export it once from a conftest.py,
    #   from tests.etcd_cluster import etcd_cluster  # noqa: F401
    # (importing it into the test module itself trips ruff's F811), then
    def test_x(etcd_cluster: EtcdCluster): ...

    cluster = EtcdCluster(); cluster.start(); ...; cluster.stop()

`kill(i)` SIGKILLs member i by its PID, `restart(i)` starts it again on
the same data dir and ports (it rejoins as the same member), `wait_healthy()`
blocks until every running member answers /health, `leader_index()` says
which member to kill to force an election. Processes and the temp dir are
removed by `stop()`, which the context manager and the fixture call even
when the test fails; members also die with the thread that started them
(PR_SET_PDEATHSIG, main thread only), so a killed pytest leaves no etcd
behind. Member logs are in `root/m{i}.log`; `logs_tail()` quotes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.harness import free_port

# A control plane on an etcd store keeps the CA key there encrypted with a passphrase it must be given.
ETCD_PASSPHRASE_ENV = {"GLASSMESH_CA_PASSPHRASE": "test passphrase for the shared CA key"}

ETCD_BIN = os.environ.get("GLASSMESH_ETCD_BIN", "/usr/bin/etcd")

# Loopback has no latency to speak of: a 50 ms heartbeat and 500 ms election
# timeout elect a new leader well within a second after a member is killed,
# and still leave slack for a loaded 2-core CI box.
HEARTBEAT_MS = 50
ELECTION_MS = 500


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (tests/e2e/harness.py, free_port: never handed out twice)."""
    return [free_port() for _ in range(n)]


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the starting thread goes away."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class EtcdTlsFiles:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as an operator gives etcd and us."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, d: Path) -> EtcdTlsFiles:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
            c, k = d / f"{stem}.pem", d / f"{stem}.key"
            c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            k.touch(mode=0o600)
            k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
            return c, k

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("etcd test CA")).issuer_name(name("etcd test CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .sign(ca_key, hashes.SHA256()))
        ca_path, _ = write("ca", ca, ca_key)

        def leaf(cn: str, *usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
            key = ec.generate_private_key(ec.SECP256R1())
            b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5))
                 .not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
                 .add_extension(x509.SubjectAlternativeName([
                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False))
            return write(cn, b.sign(ca_key, hashes.SHA256()), key)

        # etcd's JSON gateway calls its own gRPC port with the server certificate: it must be a client one too.
        server = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
        client = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH)
        return cls(ca_path, server[0], server[1], client[0], client[1])

    def client_context(self, with_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: EtcdTlsFiles | None = None  # clients speak TLS with a client certificate (--client-cert-auth)

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """etcd's own /health: true once the member sees a leader and can serve a read."""
        try:
            ctx = self.tls.client_context() if self.tls else None
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout_s, context=ctx) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


@dataclass
class EtcdCluster:
    """A cluster of `size` etcd members under one temp dir; see the module docstring."""

    size: int = 3
    root: Path | None = None
    members: list[EtcdMember] = field(default_factory=list)
    cluster_token: str = ""
    _own_root: bool = False
    start_seconds: float = 0.0  # how long start() took, for reports
    tls: bool = False  # clients must speak TLS and present a certificate from `tls_files`' CA
    tls_files: EtcdTlsFiles | None = None

    def __post_init__(self) -> None:
        if self.root is None:
            # /dev/shm when there is one: etcd fsyncs its WAL on every write,
            # and tmpfs makes that free, which keeps the suite fast.
            base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self.root = Path(tempfile.mkdtemp(prefix="gm-etcd-", dir=base))
            self._own_root = True
        self.cluster_token = f"gm-{os.getpid()}-{self.root.name}"
        if self.tls:
            self.tls_files = EtcdTlsFiles.make(self.root / "tls")
        ports = free_ports(2 * self.size)
        for i in range(self.size):
            name = f"m{i}"
            self.members.append(EtcdMember(
                name=name, client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                data_dir=self.root / f"{name}.etcd", log_path=self.root / f"{name}.log", tls=self.tls_files))

    # --- lifecycle -----------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def started(cls, size: int = 3, timeout_s: float = 20.0, tls: bool = False) -> Iterator[EtcdCluster]:
        """A started, healthy cluster that is stopped and removed on exit, whatever happens."""
        cluster = cls(size=size, tls=tls)
        try:
            cluster.start(timeout_s)
            yield cluster
        finally:
            cluster.stop()

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member (running or not), as EtcdStore takes them."""
        return [m.client_url for m in self.members]

    @property
    def url(self) -> str:
        """The `--store` form the control plane takes: etcd://127.0.0.1:p1,... (etcds:// with TLS)."""
        return ("etcds://" if self.tls else "etcd://") + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def _argv(self, m: EtcdMember) -> list[str]:
        return [
            ETCD_BIN,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",  # ignored on restart: the data dir wins
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "info",
        ] + ([
            "--cert-file", str(m.tls.server_cert), "--key-file", str(m.tls.server_key),
            "--client-cert-auth", "--trusted-ca-file", str(m.tls.ca),
        ] if m.tls else [])

    def _spawn(self, m: EtcdMember) -> None:
        log = open(m.log_path, "ab")  # the child keeps its own copy of the fd
        try:
            m.proc = subprocess.Popen(
                self._argv(m), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=_die_with_parent if threading.current_thread() is threading.main_thread() else None,
            )
        finally:
            log.close()

    def start(self, timeout_s: float = 20.0) -> None:
        """Start every member at once (they must find each other) and wait until all are healthy."""
        if not os.path.exists(ETCD_BIN):
            raise RuntimeError(f"{ETCD_BIN} not found: run scripts/install-test-deps.sh (apt-get install etcd-server)")
        t0 = time.monotonic()
        try:
            for m in self.members:
                self._spawn(m)
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0

    def wait_healthy(self, timeout_s: float = 15.0) -> None:
        """Block until every running member reports healthy; raise with the logs if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [m for m in self.members if m.proc is not None]
            dead = [m for m in running if not m.running]
            if dead:
                raise RuntimeError(f"etcd member {dead[0].name} exited "
                                   f"(rc={dead[0].proc.returncode if dead[0].proc else None}):\n{self.logs_tail()}")
            if running and all(m.healthy(0.5) for m in running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd cluster not healthy after {timeout_s}s:\n{self.logs_tail()}")
            time.sleep(0.05)

    def kill(self, i: int) -> int:
        """SIGKILL member i (no graceful leave: as if its machine died); returns the PID killed."""
        m = self.members[i]
        if m.proc is None or not m.running:
            # Never signal a PID we have already reaped: the OS may have reused it.
            raise RuntimeError(f"member {m.name} is not running")
        pid = m.proc.pid
        os.kill(pid, signal.SIGKILL)
        m.proc.wait(5)
        return pid

    def restart(self, i: int, wait: bool = True, timeout_s: float = 15.0) -> None:
        """Start member i again on its old data dir and ports; it rejoins as the same member."""
        m = self.members[i]
        if m.running:
            raise RuntimeError(f"member {m.name} is still running")
        self._spawn(m)
        if wait:
            self.wait_healthy(timeout_s)

    def leader_index(self) -> int | None:
        """Which member leads now (from /v3/maintenance/status), or None if no member says."""
        for m in self.members:
            if not m.running:
                continue
            try:
                req = urllib.request.Request(m.client_url + "/v3/maintenance/status", data=b"{}", method="POST")
                ctx = m.tls.client_context() if m.tls else None
                with urllib.request.urlopen(req, timeout=1, context=ctx) as r:
                    st = json.loads(r.read())
                leader = int(st.get("leader", 0))
                member_id = int(st.get("header", {}).get("member_id", 0))
            except (OSError, ValueError):
                continue
            if leader == member_id:
                return self.members.index(m)
        return None

    def stop(self) -> None:
        """Kill every member and remove the temp dir. Safe to call twice."""
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(5)
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- diagnostics -----------------------------------------------------------
    def logs_tail(self, lines: int = 15) -> str:
        out = []
        for m in self.members:
            try:
                text = m.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            out.append(f"--- {m.name} (pid {m.pid}) ---\n" + "\n".join(text))
        return "\n".join(out)

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="module")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """One healthy 3-member cluster per test module; tests isolate themselves by key prefix.

    A test that kills a member must restart it (and wait_healthy) before it
    ends, so the next test in the module gets all three members.
    """
    with EtcdCluster.started() as cluster:
        yield cluster
