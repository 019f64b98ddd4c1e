"""Start, watch and stop a set of child processes, each with its own log file.

The demo and the end-to-end tests both run proxies and apps as real
processes. What matters is that none outlives its starter: each child gets
its own session (a Ctrl-C in the terminal reaches only the starter, which
then stops the children in order), is asked to die with its parent on Linux,
and is stopped by PID: SIGTERM, a grace period, then SIGKILL to its process
group (so a proxy's worker processes go too).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from glassmesh.model.snapshot import split_address


def glassmesh_argv(*args: str) -> list[str]:
    """`glassmesh ARGS...` with this interpreter, without relying on PATH."""
    return [sys.executable, "-c", "from glassmesh.cli.main import main; main()", *args]


def proxy_argv(config: str, *extra: str) -> list[str]:
    """`glassmesh proxy --config FILE`."""
    return glassmesh_argv("proxy", "--config", config, *extra)


def control_argv(data_dir: str, listen: str, *extra: str) -> list[str]:
    """`glassmesh control --data DIR --listen ADDR`."""
    return glassmesh_argv("control", "--data", data_dir, "--listen", listen, *extra)


def _die_with_parent(parent: int) -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so no orphans.

    SIGTERM, not SIGKILL: a proxy then stops as on any SIGTERM (within its
    stop deadline, see glassmesh.stopping). A parent that died between the
    fork and the prctl sent nothing: the child ends itself then.
    """
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Child:
    name: str
    argv: list[str]
    log: str
    proc: subprocess.Popen[bytes]
    stopped_on_purpose: bool = False  # stopped by stop_child(): its exit is not a failure

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessGroup:
    """Children started together and stopped together (also as a context manager)."""

    def __init__(self, log_dir: str, env: dict[str, str] | None = None) -> None:
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], *, die_with_parent: bool = True, append: bool = False) -> Child:
        """Start a child; its output goes to LOG_DIR/NAME.log (appended to with append=True).

        die_with_parent: on Linux the child gets SIGTERM when the *thread* that
        started it ends (that is how PR_SET_PDEATHSIG works), so a thread that
        starts children must outlive them.
        """
        log = os.path.join(self.log_dir, f"{name}.log")
        with open(log, "ab" if append else "wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=(functools.partial(_die_with_parent, os.getpid())
                            if die_with_parent and sys.platform == "linux" else None),
            )
        child = Child(name, list(argv), log, proc)
        self.children.append(child)
        return child

    def dead(self) -> list[Child]:
        """Children that exited on their own (not those stopped with stop_child)."""
        return [c for c in self.children if not c.alive() and not c.stopped_on_purpose]

    def stop_child(self, child: Child, grace: float = 5.0) -> int:
        """Stop one child by its PID: SIGTERM, up to `grace` seconds, then SIGKILL to its group.

        Returns its exit status (negative: the signal that ended it).
        """
        child.stopped_on_purpose = True
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
        try:
            child.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(child.pid, signal.SIGKILL)
            child.proc.wait(timeout=5)
        _signal_group(child.pid, signal.SIGKILL)  # anything it left behind in its group
        return child.proc.returncode

    def restart(self, child: Child) -> Child:
        """Start a stopped child again with the same argv; its log continues in the same file."""
        if child.alive():
            raise RuntimeError(f"{child.name} (pid {child.pid}) is still running")
        return self.start(child.name, child.argv, append=True)

    def stop(self, grace: float = 5.0) -> list[Child]:
        """SIGTERM every child (newest first), wait up to `grace`, then SIGKILL what is left; returns those.

        A child leads its own process group, so the group id reaches its workers
        too (and nothing else): leftovers get SIGTERM, then SIGKILL.
        """
        for c in reversed(self.children):
            if c.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        forced = [c for c in self.children if c.alive()]
        for c in forced:
            _signal_group(c.pid, signal.SIGKILL)
            c.proc.wait(timeout=5)
        leftovers = [c.pid for c in self.children if _signal_group(c.pid, signal.SIGTERM)]
        end = time.monotonic() + 2.0
        while leftovers and time.monotonic() < end:
            time.sleep(0.05)
            leftovers = [g for g in leftovers if _signal_group(g, 0)]
        for g in leftovers:
            _signal_group(g, signal.SIGKILL)
        return forced

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it has no members left."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


# --- readiness --------------------------------------------------------------------------------------


def http_get(addr: str, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A plain GET to ip:port (no proxy environment variables involved)."""
    host, port = split_address(addr)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_json(addr: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """A JSON request to ip:port (the control plane's API); (status, decoded body or None)."""
    host, port = split_address(addr)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"content-type": "application/json"} if data else {})
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, None
    finally:
        conn.close()


def can_connect(addr: str, timeout: float = 0.5) -> bool:
    host, port = split_address(addr)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def admin_ready(admin: str) -> bool:
    try:
        return http_get(admin, "/ready", timeout=1.0)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def wait_until(
    checks: dict[str, Callable[[], bool]],
    timeout: float,
    *,
    give_up: Callable[[], bool] | None = None,
    interval: float = 0.1,
) -> list[str]:
    """Poll every check until all pass; returns the names still failing at the deadline.

    Stops early (returning those still failing) when `give_up()` is true (a child died, Ctrl-C).
    """
    pending = dict(checks)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if pending[name]():
                del pending[name]
        if give_up is not None and give_up():
            break
        if pending:
            time.sleep(interval)
    return list(pending)


# --- ports --------------------------------------------------------------------------------------------


class PortBusy(RuntimeError):
    """An address the demo needs cannot be bound; the message names it and its use."""


def check_bindable(addresses: dict[str, str]) -> None:
    """Bind each address (ip:port -> what it is for) once, to fail fast with a clear message."""
    for addr, what in addresses.items():
        host, port = split_address(addr)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortBusy(
                        f"port {port} on {host} ({what}) is already in use; "
                        f"find who holds it with `ss -ltnp 'sport = :{port}'` and stop it, "
                        "or stop an earlier demo still running"
                    ) from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise PortBusy(
                        f"cannot use address {host} ({what}): it is not on this machine. On macOS add it "
                        f"with `sudo ifconfig lo0 alias {host}`; on Linux all of 127.0.0.0/8 is loopback"
                    ) from None
                raise PortBusy(f"cannot bind {addr} ({what}): {e.strerror}") from None
