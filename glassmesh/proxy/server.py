"""Starting a proxy: listeners, workers, admin, signals.

With one worker the process does everything. With N, a supervisor forks N
workers that share each listening port through SO_REUSEPORT (the kernel
spreads connections), restarts a worker that dies, and serves the admin
port itself, merging every worker's counters so that /metrics is one proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import grp
import json
import os
import signal
import socket
import stat
import tempfile
import time
from typing import TYPE_CHECKING, Any

import uvloop

from glassmesh.buildinfo import hot_path
from glassmesh.model.snapshot import Snapshot, SnapshotError, encode_snapshot, load_snapshot, split_address
from glassmesh.protocols.http1 import reseed
from glassmesh.proxy import runtime as runtime_mod
from glassmesh.proxy import stats as stats_mod
from glassmesh.proxy.admin import AdminProtocol, json_body
from glassmesh.proxy.http import ServerConn
from glassmesh.proxy.inbound import InboundHandshake
from glassmesh.proxy.routing import compile_table
from glassmesh.proxy.runtime import AccessLog, Runtime, log
from glassmesh.proxy.sides import OutboundSide
from glassmesh.proxy.tcp import TcpLinkClient
from glassmesh.proxy.tls import listener_context
from glassmesh.stopping import StopDeadline, on_stop_signals

if TYPE_CHECKING:  # the control-plane watch (aiohttp) is only imported by proxies started with --control
    from glassmesh.proxy.watch import ControlLink


class StartupError(Exception):
    pass


def _listen_set(s: Snapshot) -> list[str]:
    return sorted([s.inbound] + [x.outbound for x in s.local_services if x.outbound]
                  + [x.outbound_socket for x in s.local_services if x.outbound_socket]
                  + [t.listen for t in s.tcp_links])


def _bind_unix(path: str, mode: str, group: str | None) -> socket.socket:
    """A unix socket whose permissions say who may call as its service."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by an earlier run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, int(mode, 8))
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except (OSError, KeyError) as e:
        sock.close()
        raise StartupError(f"cannot listen on {path}: {e}") from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def bind_unix_sockets(snap: Snapshot) -> dict[str, socket.socket]:
    return {ls.name: _bind_unix(ls.outbound_socket, ls.outbound_socket_mode, ls.outbound_socket_group)
            for ls in snap.local_services if ls.outbound_socket}


def _bind(addr: str, reuse_port: bool) -> socket.socket:
    host, port = split_address(addr)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {addr}: {e.strerror}") from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


class Worker:
    """One serving process: all data-plane listeners of the snapshot."""

    def __init__(self, config_path: str, snap: Snapshot, keylog: str | None, access_log: AccessLog | None) -> None:
        self.config_path = config_path
        self.rt = Runtime(snap, keylog=keylog, access_log=access_log)
        self.servers: list[asyncio.AbstractServer] = []
        self.started = time.time()
        self.last_reload: dict[str, Any] = {"version": snap.version, "accepted": True, "at": time.time()}

    async def start(self, reuse_port: bool, unix: dict[str, socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        rt = self.rt
        snap = rt.snapshot
        socks = []
        for name, usock in unix.items():
            socks.append((usock, lambda n=name: ServerConn(rt, OutboundSide(rt, n)), None))
        try:
            for ls in snap.local_services:
                if ls.outbound:
                    socks.append((_bind(ls.outbound, reuse_port), lambda n=ls.name: ServerConn(rt, OutboundSide(rt, n)),
                                  None))
            for t in snap.tcp_links:
                socks.append((_bind(t.listen, reuse_port),
                              lambda t=t: TcpLinkClient(rt, t.source, t.destination), None))
            if snap.local_services:
                ctx = listener_context(snap.trust_bundle, lambda name: rt.table.server_ctx.get(name), rt.keylog)
                socks.append((_bind(snap.inbound, reuse_port), lambda: InboundHandshake(rt), ctx))
        except StartupError:
            for s, _, _ in socks:
                s.close()
            raise
        for sock, factory, ctx in socks:
            kw: dict[str, Any] = {}
            if ctx is not None:
                kw = {"ssl": ctx, "ssl_handshake_timeout": rt.timeouts.connect_ms / 1000}
            self.servers.append(await loop.create_server(factory, sock=sock, **kw))
        rt.spawn(rt.sweeper())
        rt.ready = True

    def reload(self) -> None:
        """SIGHUP: read the snapshot file again and swap it in whole, or keep the old one."""
        try:
            snap = load_snapshot(self.config_path)
        except Exception as e:
            self._rejected(None, e)
            return
        with contextlib.suppress(Exception):  # apply_snapshot logged and recorded why
            self.apply_snapshot(snap)

    # --- the control-plane watch's Target (glassmesh.proxy.watch) ---
    reads_file = False

    def current(self) -> Snapshot:
        return self.rt.snapshot

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Swap in a snapshot whole; raises (keeping the old one) when it cannot be used."""
        try:
            if _listen_set(snap) != _listen_set(self.rt.snapshot):
                raise SnapshotError("listener addresses changed; that needs a restart")
            self.rt.apply(snap)
        except Exception as e:
            self._rejected(snap.version, e)
            raise
        self.last_reload = {"version": snap.version, "accepted": True, "at": time.time()}
        log(f"snapshot version {snap.version} accepted")

    def _rejected(self, version: int | None, e: Exception) -> None:
        self.last_reload = {"version": version, "accepted": False, "reason": str(e), "at": time.time()}
        log(f"snapshot rejected, keeping version {self.rt.snapshot.version}: {e}")

    async def stop(self) -> None:
        for s in self.servers:
            s.close()
        await self.rt.close()

    def ready_doc(self) -> dict[str, Any]:
        snap = self.rt.snapshot
        return {
            "ready": self.rt.ready,
            "host": snap.host,
            "snapshot_version": snap.version,
            "last_reload": self.last_reload,
            "listeners": _listen_set(snap),
        }


def _admin_routes(
    snapshot: Any, stats_dump: Any, ready: Any
) -> dict[str, Any]:
    async def metrics() -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", stats_mod.render(await stats_dump())

    async def config() -> tuple[int, str, bytes]:
        return 200, "application/json", encode_snapshot(snapshot()) + b"\n"

    async def healthz() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"ok\n"

    async def ready_() -> tuple[int, str, bytes]:
        doc = await ready()
        return (200 if doc.get("ready") else 503), "application/json", json_body(doc)

    async def stats_json() -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(await stats_dump()).encode()

    return {"/metrics": metrics, "/config": config, "/healthz": healthz, "/ready": ready_, "/stats.json": stats_json}


async def _serve_single(config_path: str, snap: Snapshot, keylog: str | None, access_log: AccessLog | None,
                        admin_addr: str | None, admin_unix: str | None, reuse_port: bool,
                        unix: dict[str, socket.socket], attach: ControlLink | None = None) -> None:
    loop = asyncio.get_running_loop()
    w = Worker(config_path, snap, keylog, access_log)

    async def dump() -> dict[str, Any]:
        d = w.rt.stats.dump()
        if attach is not None:
            d["control"] = attach.metrics()
        return d

    async def ready() -> dict[str, Any]:
        doc = w.ready_doc()
        if attach is not None:
            doc.update(attach.ready_detail())
        return doc

    routes = _admin_routes(lambda: w.rt.snapshot, dump, ready)
    if admin_unix:
        admin = await loop.create_unix_server(lambda: AdminProtocol(routes), admin_unix)
    else:
        admin = await loop.create_server(lambda: AdminProtocol(routes), sock=_bind(admin_addr, False))
    await w.start(reuse_port, unix)
    if not admin_unix:
        log(f"host {snap.host} serving snapshot version {snap.version}: " + ", ".join(_listen_set(snap))
            + f"; admin {admin_addr}; hot path: {hot_path()}")
    if attach is not None:
        await attach.start(w)
    stop = asyncio.Event()
    on_stop_signals(loop, stop.set, StopDeadline("worker" if admin_unix else "proxy", log))
    loop.add_signal_handler(signal.SIGHUP, w.reload)
    await stop.wait()
    if attach is not None:
        await attach.stop()
    admin.close()
    await w.stop()


async def _get_unix(path: str, target: str) -> bytes:
    r, wr = await asyncio.open_unix_connection(path)
    try:
        wr.write(f"GET {target} HTTP/1.1\r\nhost: worker\r\n\r\n".encode())
        data = await r.read()
    finally:
        wr.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    return body


def _fork_worker(config_path: str, snap: Snapshot, keylog: str | None, access_path: str | None, sock: str,
                 unix: dict[str, socket.socket]) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        reseed()
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handler, until the worker's own
            access = AccessLog(access_path) if access_path else None
            uvloop.run(_serve_single(config_path, snap, keylog, access, None, sock, True, unix))
        except BaseException as e:  # noqa: BLE001 - a child must never return into the parent's code
            log(f"worker failed: {e}")
            code = 1
        os._exit(code)
    return pid


class _SupervisorTarget:
    """The control-plane watch's view of a supervisor: it writes the file, then the workers reload it."""

    reads_file = True

    def __init__(self, current: dict[str, Snapshot], reload: Any) -> None:
        self._current, self._reload = current, reload

    def current(self) -> Snapshot:
        return self._current["snap"]

    def apply_snapshot(self, snap: Snapshot) -> None:
        self._reload()


async def _supervise(config_path: str, snap: Snapshot, workers: int, keylog: str | None,
                     access_path: str | None, attach: ControlLink | None = None) -> None:
    loop = asyncio.get_running_loop()
    rundir = tempfile.mkdtemp(prefix="glassmesh-proxy-")
    socks = [os.path.join(rundir, f"worker-{i}.sock") for i in range(workers)]
    current = {"snap": snap}
    # Bind the admin port first: a busy port fails before any worker starts.
    admin_sock = _bind(snap.admin, False)
    # Unix sockets cannot be shared by SO_REUSEPORT: bind once, every worker accepts on it.
    unix = bind_unix_sockets(snap)
    runtime_mod.PROCESS_WORKERS = workers
    pids = [_fork_worker(config_path, snap, keylog, access_path, s, unix) for s in socks]

    async def dump() -> dict[str, Any]:
        dumps = []
        for s in socks:
            with contextlib.suppress(OSError, RuntimeError):
                dumps.append(json.loads(await _get_unix(s, "/stats.json")))
        merged = stats_mod.merge(dumps)
        if attach is not None:
            merged["control"] = attach.metrics()
        return merged

    async def ready() -> dict[str, Any]:
        docs = []
        for s in socks:
            try:
                docs.append(json.loads(await _get_unix(s, "/ready")))
            except (OSError, RuntimeError, ValueError):
                docs.append({"ready": False})
        doc = {
            "ready": all(d.get("ready") for d in docs),
            "host": snap.host,
            "snapshot_version": current["snap"].version,
            "workers": docs,
        }
        if attach is not None:
            doc.update(attach.ready_detail())
        return doc

    def reload() -> None:
        try:
            current["snap"] = load_snapshot(config_path)
        except SnapshotError as e:
            log(f"snapshot rejected: {e}")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    routes = _admin_routes(lambda: current["snap"], dump, ready)
    admin = await loop.create_server(lambda: AdminProtocol(routes), sock=admin_sock)
    log(f"host {snap.host}: {workers} workers on " + ", ".join(_listen_set(snap)) + f"; admin {snap.admin}")
    stop = asyncio.Event()
    on_stop_signals(loop, stop.set, StopDeadline("supervisor", log))
    loop.add_signal_handler(signal.SIGHUP, reload)
    if attach is not None:
        await attach.start(_SupervisorTarget(current, reload))
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stop.wait()
            for i, pid in enumerate(pids):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, 0
                if done and not stop.is_set():
                    log(f"worker {i} (pid {pid}) exited with status {status}; restarting it")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(socks[i])
                    pids[i] = _fork_worker(config_path, current["snap"], keylog, access_path, socks[i], unix)
    finally:
        if attach is not None:
            await attach.stop()
        admin.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                except ChildProcessError:
                    break
                await asyncio.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for s in socks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s)
        with contextlib.suppress(OSError):
            os.rmdir(rundir)


def _tune_malloc() -> None:
    """Keep TLS read buffers off mmap.

    uvloop reads TLS plaintext into a fresh 256 KiB bytes object and shrinks it
    to the size read. Above glibc's mmap threshold (128 KiB until a large block
    is freed) that is an mmap, an mremap and an munmap per read: three system
    calls and a page fault per request, measured with strace on the inbound
    side. A fixed threshold of 1 MiB (and a trim threshold above it, so that
    freeing does not shrink the heap each time) keeps them on the heap.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
        libc.mallopt(m_trim_threshold, 4 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run(config_path: str, workers: int = 1, keylog: str | None = None, access_log: str | None = None) -> None:
    """Load, check and serve; raises SnapshotError/StartupError with a clear message on bad config."""
    snap = load_snapshot(config_path)
    _tune_malloc()
    try:
        compile_table(snap)  # certificates load, or we stop here with a clear message
    except Exception as e:
        raise StartupError(str(e)) from None
    try:
        if workers <= 1:
            access = AccessLog(access_log) if access_log else None
            uvloop.run(_serve_single(config_path, snap, keylog, access, snap.admin, None, False,
                                     bind_unix_sockets(snap)))
        else:
            uvloop.run(_supervise(config_path, snap, workers, keylog, access_log))
    finally:
        for ls in snap.local_services:
            if ls.outbound_socket:
                with contextlib.suppress(OSError):
                    os.unlink(ls.outbound_socket)
