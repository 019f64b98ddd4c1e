"""DNS discovery against a real DNS server: Debian's dnsmasq, started by the test, and a real control plane.

Proves that a service with `dns:` gets its A records (with the service port)
or its SRV targets (with the SRV port) as endpoints in the snapshots the
control plane streams; that a changed record shows up once its TTL has run
out; that an answer too big for UDP still arrives whole (over TCP); and that
a DNS outage keeps the last good instances instead of emptying the service.
"""

from __future__ import annotations

import getpass
import grp
import os
import shutil
import signal
import subprocess
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import pytest

from tests.e2e.harness import free_port
from tests.e2e.test_control_plane import Control, Watcher

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.access("/usr/sbin/dnsmasq", os.X_OK) else None)
TTL = 1  # dnsmasq's TTL for every record it serves here: changes must show within ~TTL + compile


def udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    return free_port(udp=True)


class Dnsmasq:
    """One dnsmasq on 127.0.0.1:port serving only what the test writes (no upstream, no /etc/hosts).

    A hosts file (re-read on SIGHUP) carries A records; a conf file carries SRV records
    and their targets (read at start only). Stopped by its own PID.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or udp_tcp_port()
        self.hosts, self.conf = root / "dns.hosts", root / "dns.conf"
        self.hosts.touch()
        self.conf.touch()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert DNSMASQ is not None, "dnsmasq is missing: make test installs it (scripts/install-test-deps.sh)"
        self.log = open(self.root / "dnsmasq.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([
            DNSMASQ, "--no-daemon", f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces",
            "--no-resolv", "--no-hosts", f"--addn-hosts={self.hosts}", f"--conf-file={self.conf}",
            f"--local-ttl={TTL}", f"--max-ttl={TTL}", "--pid-file", "--log-queries", "--log-facility=-",
            # Stay this user: as root dnsmasq would drop to `nobody` and could not re-read our files.
            f"--user={getpass.getuser()}", f"--group={grp.getgrgid(os.getgid()).gr_name}",
        ], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 5
        while self.query("ready.invalid", "A") is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.root / "dnsmasq.log").read_text())
            time.sleep(0.02)

    def query(self, name: str, rdtype: str) -> dns.message.Message | None:
        """One plain UDP query (no EDNS, so 512 bytes at most); None if nothing answered."""
        try:
            return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return None

    def set_hosts(self, lines: list[str]) -> None:
        """Rewrite the A records and make dnsmasq re-read them (SIGHUP, to its PID)."""
        tmp = self.hosts.with_suffix(".tmp")
        tmp.write_text("".join(f"{line}\n" for line in lines))
        tmp.replace(self.hosts)
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc is not None:
            self.log.close()
        self.proc = None


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    d = Dnsmasq(tmp_path)
    try:
        yield d
    finally:
        d.stop()


class DnsControl(Control):
    """`glassmesh control --dns-server 127.0.0.1:PORT -v`; the rest (cli, poll, stop) as in test_control_plane."""

    def __init__(self, root: Path, dns_port: int) -> None:
        super().__init__(root, ["--dns-server", f"127.0.0.1:{dns_port}", "-v"])


class PatientWatcher(Watcher):
    """A Watcher that waits for its host's first snapshot (404 until the first compile after the apply)."""

    def _run(self) -> None:
        after = 0
        while not self.stopped:
            try:
                status, snap = self.control.poll(self.host, after, 1)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
                time.sleep(0.02)
                continue
            if snap is not None:
                self.got.append((time.monotonic(), snap))
                after = snap["version"]

    def stop(self) -> None:
        self.stopped = True
        self.thread.join(5)  # before the control plane goes: a poll in flight must not see it die


@pytest.fixture
def control(tmp_path: Path, dnsmasq: Dnsmasq) -> Iterator[DnsControl]:
    c = DnsControl(tmp_path, dnsmasq.port)
    try:
        yield c
    finally:
        c.stop()


def endpoints(snap: dict[str, Any], service: str) -> list[str]:
    return sorted(f"{e['host']}/{e['address']}" for s in snap["services"] if s["name"] == service
                  for e in s.get("endpoints", []))


def ext(*addrs: str) -> list[str]:
    return sorted(f"external/{a}" for a in addrs)


def apply(control: Control, tmp_path: Path, text: str) -> None:
    (tmp_path / "mesh.yaml").write_text(text)
    r = control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


MESH_A = """\
services:
  - {name: a, calls: [b]}
  - {name: b, port: 8080, dns: {name: b.test, type: A}}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
"""


def test_a_records_follow_changes_and_survive_an_outage(dnsmasq: Dnsmasq, control: DnsControl,
                                                        tmp_path: Path) -> None:
    dnsmasq.set_hosts(["127.0.1.1 b.test", "127.0.1.2 b.test"])
    dnsmasq.start()
    t = time.monotonic()
    apply(control, tmp_path, MESH_A)
    w = PatientWatcher(control, "host1")
    try:
        # The A records, each with b's port, reached directly (host "external": nothing fronts them).
        w.wait_for(lambda s: endpoints(s, "b") == ext("127.0.1.1:8080", "127.0.1.2:8080"), t, 3)

        # A record changes: seen once the 1 s TTL runs out (plus a compile and a long-poll).
        t = time.monotonic()
        dnsmasq.set_hosts(["127.0.1.1 b.test", "127.0.1.3 b.test"])
        snap = w.wait_for(lambda s: endpoints(s, "b") == ext("127.0.1.1:8080", "127.0.1.3:8080"), t, TTL + 2.5)
        # A third instance is added: no guard in the way, same path.
        t = time.monotonic()
        dnsmasq.set_hosts(["127.0.1.1 b.test", "127.0.1.3 b.test", "127.0.1.4 b.test"])
        snap = w.wait_for(lambda s: len(endpoints(s, "b")) == 3, t, TTL + 2.5)

        # DNS goes away: lookups fail (logged, retried), the instances stay.
        dnsmasq.stop()
        n = len(w.got)
        # A lookup gives up after 3 s of silence; wait for that failure to be logged.
        deadline = time.monotonic() + 6
        while "keeping the last good answer (3 instances)" not in (tmp_path / "control.log").read_text():
            assert time.monotonic() < deadline, "no failed lookup logged"
            time.sleep(0.1)
        assert len(w.got) == n, "no new snapshot while DNS is down"
        _, last = control.poll("host1", 0, 1)
        assert last is not None and endpoints(last, "b") == endpoints(snap, "b")
        st = control.cli("get")  # the control plane still answers its API
        assert st.returncode == 0

        # DNS is back, with a change: picked up at the next retry.
        t = time.monotonic()
        dnsmasq.set_hosts(["127.0.1.1 b.test", "127.0.1.3 b.test", "127.0.1.5 b.test"])
        dnsmasq.start()
        w.wait_for(lambda s: endpoints(s, "b") == ext("127.0.1.1:8080", "127.0.1.3:8080", "127.0.1.5:8080"),
                   t, 5)
    finally:
        w.stop()


MESH_SRV = """\
services:
  - {name: a}
  - {name: c, dns: {name: _http._tcp.c.test, type: SRV}}
  - {name: big, port: 9000, dns: {name: big.test}}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
"""


def test_srv_targets_and_truncated_answers(dnsmasq: Dnsmasq, control: DnsControl, tmp_path: Path) -> None:
    # Two targets at priority 0 (c1 has two addresses), a backup at priority 10 that must not be used.
    dnsmasq.conf.write_text(
        "srv-host=_http._tcp.c.test,c1.test,7001,0,10\n"
        "srv-host=_http._tcp.c.test,c2.test,7002,0,10\n"
        "srv-host=_http._tcp.c.test,backup.test,7003,10,10\n"
        "host-record=c1.test,127.0.2.1\n"
        "host-record=c2.test,127.0.2.2\n"
        "host-record=backup.test,127.0.2.3\n"
    )
    # 40 A records: 40 x 16 bytes does not fit a 512-byte UDP answer.
    big = [f"127.0.3.{i} big.test" for i in range(1, 41)]
    dnsmasq.set_hosts(["127.0.2.11 c1.test", *big])
    dnsmasq.start()
    udp = dnsmasq.query("big.test", "A")
    assert udp is not None and udp.flags & dns.flags.TC, "the UDP answer is truncated"

    t = time.monotonic()
    apply(control, tmp_path, MESH_SRV)
    w = PatientWatcher(control, "host1")
    try:
        snap = w.wait_for(lambda s: bool(endpoints(s, "c")) and bool(endpoints(s, "big")), t, 3)
        assert endpoints(snap, "c") == ext("127.0.2.1:7001", "127.0.2.11:7001", "127.0.2.2:7002")
        # All 40, so the control plane asked again over TCP.
        assert endpoints(snap, "big") == ext(*(f"127.0.3.{i}:9000" for i in range(1, 41)))
    finally:
        w.stop()
