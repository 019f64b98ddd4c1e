"""A seamless restart: the running proxy starts its successor and hands it every listening socket.

Why: a restart that stops the old process before it starts the new one (what
`systemctl restart` does) leaves a second or so in which the host's ports
refuse connections. Here nothing is ever closed: the successor gets the very
sockets the old process listens on (the same accept queues), as nginx's
binary upgrade does, so a local app never sees a refused connect. One unit,
one main process at a time.

How, on SIGUSR2 to the proxy's main process (`glassmesh restart-proxy --pid
PID` sends it and waits for the outcome; the unit's ExecReload runs that):

1. The old process starts `sys.executable` with its own original arguments
   (`sys.orig_argv`): the glassmesh now on disk, so a wheel upgraded in place
   takes effect, and the config file read again. Its listening sockets go as
   inherited file descriptors named in GLASSMESH_LISTEN_FDS (JSON: key ->
   [fd, ...], several for a port under --workers), like systemd's LISTEN_FDS;
   GLASSMESH_HANDOVER_FD is the write end of a pipe.
2. The successor reads both at start and removes them from its environment
   (`inherit`); `listeners.bind` takes a handed socket for its key instead of
   binding one (admin, inbound, outbound ports and unix sockets, tcp links),
   binds only what is new, closes what it no longer wants. Once it would say
   READY=1 it writes "ready" on the pipe instead (`ready`).
3. The old process, still systemd's main one, says `MAINPID=<successor>` and
   `READY=1` in one message (notify.py), then stops accepting everywhere,
   admin included, without touching the sockets' queues or unix socket files
   (they are the successor's), and drains as on SIGTERM (drain.py).
4. A successor that exits, or is not ready within TIMEOUT_S, is stopped; the
   old process serves on as if nothing happened and logs why.

The outcome goes back to whoever asked through an abstract unix socket named
for the old process's pid, which the asking command listens on: each end
checks the other's credentials (SO_PEERCRED: the same user, and the pid asked).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable

from glassmesh.proxy.listeners import StartupError, give_away, hand_in, settle
from glassmesh.proxy.log import log
from glassmesh.systemd import notify as sd

ENV_FDS = "GLASSMESH_LISTEN_FDS"
ENV_READY = "GLASSMESH_HANDOVER_FD"
TIMEOUT_S = 60.0  # a successor not ready within this is stopped (it serves from its last-known-good snapshot)
_ENV_TIMEOUT = "GLASSMESH_HANDOVER_TIMEOUT_S"
SIGNAL = signal.SIGUSR2

_ready_fd: int | None = None  # in a successor, until it is ready: the pipe to the process it replaces
_ready_pid = 0  # the process that inherited it (a forked worker never writes on it)
_successors: list[subprocess.Popen[bytes]] = []  # kept referenced: the old process exits while they run


class HandoverError(Exception):
    """The successor did not come up; the old process serves on."""


def timeout_s() -> float:
    try:
        return max(1.0, float(os.environ[_ENV_TIMEOUT]))
    except (KeyError, ValueError):
        return TIMEOUT_S


# --------------------------------------------------------------------------- the successor's side


def inherit() -> None:
    """At start: take the sockets a predecessor handed over (if any), and the pipe to tell it we serve.

    Only listening sockets are accepted; the variables leave the environment
    at once, so nothing this process starts sees them.
    """
    global _ready_fd, _ready_pid
    raw, pipe = os.environ.pop(ENV_FDS, None), os.environ.pop(ENV_READY, None)
    if raw is None:
        return
    socks: dict[str, list[socket.socket]] = {}
    try:
        doc = json.loads(raw)
        for key, fds in doc.items():
            socks[str(key)] = []
            for fd in fds:
                s = socket.socket(fileno=int(fd))
                socks[str(key)].append(s)
                os.set_inheritable(s.fileno(), False)
                if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    raise ValueError(f"fd {fd} is not a listening socket")
        if pipe is not None:
            _ready_fd, _ready_pid = int(pipe), os.getpid()
            os.set_inheritable(_ready_fd, False)
            sd.quiet(True)  # until the process it replaces has made it the main one
    except (ValueError, TypeError, AttributeError, OSError) as e:
        for got in socks.values():
            for s in got:
                s.close()
        raise StartupError(f"{ENV_FDS}: not sockets handed over by a glassmesh proxy: {e}") from None
    hand_in(socks)
    log(f"took over {sum(map(len, socks.values()))} listening sockets from pid {os.getppid()} "
        f"({', '.join(sorted(socks))})")


def ready(status: str) -> None:
    """READY=1, or for a successor: tell the process it replaces, which tells systemd MAINPID= and READY=1."""
    global _ready_fd
    if _ready_fd is None or os.getpid() != _ready_pid:
        sd.ready(status)
        return
    settle()
    fd, _ready_fd = _ready_fd, None
    try:
        os.write(fd, b"ready\n")
    except OSError as e:
        log(f"cannot tell the proxy this one replaces that it serves ({e}); serving anyway")
    finally:
        os.close(fd)
    sd.quiet(False)  # the main process from now on (the old one says MAINPID= for it as it reads this)


def forget_in_child() -> None:
    """In a forked worker: the pipe is the main process's to write."""
    global _ready_fd
    if _ready_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_ready_fd)
        _ready_fd = None


# --------------------------------------------------------------------------- the old process's side


def command() -> list[str]:
    """This process's own command line, run by the interpreter on disk: `glassmesh proxy ...` anew."""
    return [sys.executable, *sys.orig_argv[1:]]


def _read_word(fd: int, timeout: float) -> bytes:
    """What the successor writes on the pipe: b"ready\\n", or b"" when it exits (or `timeout` passes) first."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 64)
        if not chunk:
            return b""
        buf += chunk
    return buf


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def start_successor(socks: dict[str, list[socket.socket]], timeout: float) -> int:
    """Start the successor with `socks`; its pid once it serves, HandoverError (it is stopped) otherwise."""
    loop = asyncio.get_running_loop()
    fds = {k: [s.fileno() for s in v] for k, v in socks.items()}
    r, w = os.pipe()
    argv = command()
    try:
        proc = subprocess.Popen(argv, env={**os.environ, ENV_FDS: json.dumps(fds), ENV_READY: str(w)},
                                pass_fds=[*(fd for v in fds.values() for fd in v), w])
    except OSError as e:
        os.close(r)
        raise HandoverError(f"cannot start {argv[0]}: {e.strerror or e}") from None
    finally:
        os.close(w)
    word = loop.run_in_executor(None, _read_word, r, timeout)
    try:
        got = await asyncio.shield(word)
    except asyncio.CancelledError:  # the old process is stopping (SIGTERM): no successor then
        await loop.run_in_executor(None, _stop, proc)
        await asyncio.wait([word])
        raise
    finally:
        if word.done():
            os.close(r)
    if got.strip() == b"ready":
        _successors.append(proc)
        return proc.pid
    with contextlib.suppress(subprocess.TimeoutExpired):
        await loop.run_in_executor(None, proc.wait, 2)
    code = proc.poll()
    if code is None:
        await loop.run_in_executor(None, _stop, proc)
        raise HandoverError(f"the new process (pid {proc.pid}) was not ready within {timeout:g} s: stopped it")
    raise HandoverError(f"the new process (pid {proc.pid}) exited with status {code} before it was ready "
                        "(its own lines above say why)")


def waiter_address(pid: int) -> str:
    """Where `glassmesh restart-proxy --pid PID` waits for the outcome (an abstract unix socket name)."""
    return f"\0glassmesh-proxy-restart.{pid}"


def _peer(s: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end, as the kernel says."""
    pid, uid, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def answer(line: str) -> None:
    """Tell a waiting `glassmesh restart-proxy` the outcome; nobody waiting (a bare SIGUSR2) is fine."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(waiter_address(os.getpid()))
            _, uid = _peer(s)
            if uid not in (os.geteuid(), 0):
                log(f"not telling the outcome of the restart to uid {uid}, which listens where glassmesh "
                    "restart-proxy would")
                return
            s.sendall(line.encode() + b"\n")
    except OSError:
        pass


class Restarter:
    """SIGUSR2 in the old process: one seamless restart at a time, none once stopping.

    `sockets()` gives every listening socket to hand over, by key; `handed(pid)`
    is called once the successor serves (the caller then drains and exits).
    """

    def __init__(self, sockets: Callable[[], dict[str, list[socket.socket]]], handed: Callable[[int], None]) -> None:
        self.sockets, self.handed = sockets, handed
        self.task: asyncio.Task[None] | None = None
        self.stopping = False

    def request(self) -> None:
        if self.stopping:
            log("restart asked (SIGUSR2): ignored, the proxy is stopping")
            answer("failed the proxy is stopping")
        elif self.task is not None:
            log("restart asked (SIGUSR2): ignored, one is under way")
            answer("failed a restart is under way")
        else:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        socks = self.sockets()
        sd.reloading()
        log(f"seamless restart: handing {sum(map(len, socks.values()))} listening sockets to a new "
            f"`{shlex.join(command())}`")
        try:
            pid = await start_successor(socks, timeout_s())
        except Exception as e:  # noqa: BLE001 - whatever stops the successor, this process serves on
            if not isinstance(e, HandoverError):
                e = HandoverError(f"{type(e).__name__}: {e}")
            log(f"seamless restart failed; this process (pid {os.getpid()}) serves on: {e}")
            sd.ready(f"restart failed, pid {os.getpid()} serves on: {e}")
            answer(f"failed {e}")
            self.task = None
            return
        give_away(socks)
        sd.handed_to(pid, f"serving (took over from pid {os.getpid()})")
        log(f"seamless restart: pid {pid} serves every listener now; this process (pid {os.getpid()}) drains")
        answer(f"ok {pid}")
        self.handed(pid)

    async def cancel(self) -> None:
        """A stop signal came: no successor (one being started is stopped), no restart from now on."""
        self.stopping = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])


# --------------------------------------------------------------------------- the asking command's side


def handles_signal(pid: int) -> bool:
    """Whether `pid` catches SIGUSR2 (/proc/PID/status SigCgt): one that does not would die of it."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (SIGNAL - 1) & 1)
    return False


def ask(pid: int, timeout: float) -> tuple[bool, str]:
    """SIGUSR2 to proxy `pid`, then its outcome: (True, new pid) or (False, why). OSError when it cannot ask."""
    if not handles_signal(pid):
        return False, (f"pid {pid} does not handle {SIGNAL.name}: not a glassmesh proxy's main process that can "
                       "restart seamlessly (an older release, a worker, or one still starting); restart it the "
                       "plain way")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        try:
            srv.bind(waiter_address(pid))
        except OSError as e:
            return False, f"cannot wait for pid {pid}'s answer ({e.strerror}): is a restart of it under way?"
        srv.listen(4)
        os.kill(pid, SIGNAL)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, f"no answer from pid {pid} within {timeout:g} s (its log says where it is)"
            srv.settimeout(left)
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                if _peer(conn)[0] != pid:
                    continue  # not the proxy asked: not its answer
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            word, _, rest = data.decode(errors="replace").strip().partition(" ")
            return word == "ok", rest
