"""A fleet of hosts on one machine: network namespaces joined by veth pairs to a bridge.

Each host is a namespace with its own loopback and one interface, `eth0`,
with an address of its own on 10.213.0.0/24; the bridge lives in a namespace
of its own too, so the root namespace gets no address and no interface, and
nothing a test sends can leave the machine. Everything is created with `ip`
(iproute2) and removed on close, even after a failure: deleting a namespace
deletes its end of each veth pair, and so the pair.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.213.0"


def ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


@dataclass
class Host:
    name: str
    ns: str
    addr: str
    dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, argv: list[str]) -> list[str]:
        """argv run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: list[str], timeout: float = 120, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(argv), capture_output=True, text=True, timeout=timeout, env=env,
                              input=stdin)

    def spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            p = subprocess.Popen(self.cmd(argv), stdout=f, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True)
        self.procs.append(p)
        return p


class Fleet:
    """n hosts, host1..hostN at 10.213.0.1..N, on one bridge; `close()` removes everything it made."""

    def __init__(self, n: int, root: Path) -> None:
        self.tag = secrets.token_hex(2)
        self.root = root
        self.switch = f"gmf{self.tag}sw"
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        try:
            self._add_ns(self.switch)
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
            for i in range(1, n + 1):
                self._add_host(i)
        except BaseException:
            self.close()
            raise

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def _add_host(self, i: int) -> None:
        ns = f"gmf{self.tag}h{i}"
        self._add_ns(ns)
        b = f"gmf{self.tag}{i}b"
        # Made straight inside the two namespaces: the root namespace never holds either end.
        ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", b, "netns", self.switch)
        ip("-n", self.switch, "link", "set", b, "master", "br0")
        ip("-n", self.switch, "link", "set", b, "up")
        addr = f"{SUBNET}.{i}"
        ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        d = self.root / f"host{i}"
        d.mkdir(parents=True, exist_ok=True)
        self.hosts.append(Host(f"host{i}", ns, addr, d))

    def close(self) -> None:
        """Stop every process a host started (its whole session), then delete the namespaces."""
        for h in self.hosts:
            for p in h.procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(10)
        for ns in reversed(self._namespaces):
            # Anything still inside (a process that escaped its session) goes with the namespace's pids.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            deadline = time.monotonic() + 5
            while True:
                r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
                if r.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        self._namespaces.clear()


def root_namespace_untouched() -> list[str]:
    """Interfaces in the root namespace that a fleet could have left (none expected)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "gmf" in line]
