"""Starting a proxy: listeners, workers, admin, signals; the one start-up path of every proxy.

`serve` is how a proxy runs, whether `run` loaded its snapshot from a file or
the control-plane watch (watch.py) got it from the disk or the control plane.

With one worker the process does everything. With N, a supervisor binds
every listener, forks N workers that share each port through SO_REUSEPORT
(the kernel spreads connections; see listeners.py), restarts a worker that
dies, and serves the admin port itself, merging every worker's counters so
that /metrics is one proxy. Listeners follow the snapshot in force: a swap
binds the ones it adds and drains the ones it removes, without a restart.

SIGUSR2 to the main process (alone, or the supervisor) restarts it
seamlessly: a successor gets every listening socket and the old process
drains once it serves (handover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import uvloop

from glassmesh.buildinfo import hot_path, hot_path_doc, warn_if_interpreted
from glassmesh.model.snapshot import Snapshot, encode_snapshot, load_snapshot
from glassmesh.protocols.http1 import reseed
from glassmesh.proxy import handover
from glassmesh.proxy import runtime as runtime_mod
from glassmesh.proxy import stats as stats_mod
from glassmesh.proxy.admin import AdminProtocol, json_body
from glassmesh.proxy.asks import run_process_route
from glassmesh.proxy.drain import DRAIN_TIMEOUT_S, Drain, drain
from glassmesh.proxy.http import ServerConn
from glassmesh.proxy.inbound import InboundHandshake
from glassmesh.proxy.listeners import (
    Listeners,
    Spec,
    StartupError,
    bind_all,
    close_all,
    forget_handed,
    plan,
    set_modes,
    unlink_unix,
    wanted,
)
from glassmesh.proxy.log import error as log_error
from glassmesh.proxy.log import log
from glassmesh.proxy.ring import Ring
from glassmesh.proxy.routing import compile_table
from glassmesh.proxy.runtime import AccessLog, Runtime
from glassmesh.proxy.sides import OutboundSide
from glassmesh.proxy.spans import Exporter
from glassmesh.proxy.tcp import TcpLinkClient
from glassmesh.proxy.tls import listener_context
from glassmesh.stopping import StopDeadline, deadline_s, on_stop_signals
from glassmesh.systemd import notify as sd


class ControlLink(Protocol):
    """What serving needs of the control-plane watch (watch.ControlLink, which imports this module to start).

    Named here, not imported: watch.py (aiohttp) is loaded only by proxies
    started with --control, and it calls `serve`, so an import back would be a circle.
    """

    async def start(self, target: Any) -> None: ...

    async def stop(self) -> None: ...

    def ready_detail(self) -> dict[str, Any]: ...

    def metrics(self) -> dict[str, Any]: ...

__all__ = ["Options", "StartupError", "Worker", "launch", "run", "serve"]


@dataclass(frozen=True)
class Options:
    """The `glassmesh proxy` flags that shape how it serves, whether its snapshot came from a file or a control plane.

    Both start-ups go through `serve`, so a flag is handled in one place: a
    second copy of this code once opened --access-log as a plain file for a
    proxy under a control plane, and every mesh error there became an empty
    reply.
    """

    workers: int = 1
    keylog: str | None = None
    access_log: str | None = None
    drain_s: float = DRAIN_TIMEOUT_S  # after SIGTERM, what is in flight may take this long (drain.py)
    otlp: str | None = None  # where each worker sends its spans (spans.py); None: no spans


class Worker:
    """One serving process: the Runtime, and the listeners of the snapshot in force.

    Alone (one worker) it binds its listeners itself, admin included; under a
    supervisor it gets its sockets from the supervisor (`offer`) and serves
    admin on a unix socket of its own.
    """

    def __init__(self, config_path: str, snap: Snapshot, keylog: str | None, access_log: AccessLog | None,
                 supervised: bool = False, otlp: str | None = None) -> None:
        self.config_path = config_path
        # The trace ring is always on; GLASSMESH_TRACE_RING=0 exists only so `make bench` can show what it costs.
        ring = Ring() if otlp or os.environ.get("GLASSMESH_TRACE_RING", "1") != "0" else None
        if ring is not None:
            ring.spans = Exporter(otlp, snap.host) if otlp else None
        self.rt = Runtime(snap, keylog=keylog, access_log=access_log, ring=ring)
        if ring is not None and ring.spans is not None:
            self.rt.stats.spans = ring.spans.counts
        self.supervised = supervised
        self.routes: dict[str, Any] = {}  # the admin routes (alone only), set once the worker exists
        self.listeners = Listeners(self._factory, self._tls, owns_paths=not supervised,
                                   handshake_timeout=lambda: self.rt.timeouts.connect_ms / 1000)
        self.offered: dict[str, socket.socket] = {}  # sockets from the supervisor, not yet served
        self.started = time.time()
        self.draining: Drain | None = None  # once stopping (SIGTERM)
        self.last_reload: dict[str, Any] = {"version": snap.version, "accepted": True, "at": time.time()}

    def wanted(self, snap: Snapshot) -> dict[str, Spec]:
        return wanted(snap, admin=not self.supervised)

    async def process_route(self, name: str, params: dict[str, str]) -> Any:
        """This process's answer to an ask's per-process route (proxy/asks.py)."""
        return await run_process_route(self.rt, name, params)

    async def query(self, name: str, params: dict[str, str]) -> list[Any]:
        """The ask channel's view of a proxy alone: one serving process, this one."""
        return [await self.process_route(name, params)]

    def _factory(self, spec: Spec) -> Callable[[], Any]:
        """What a connection to `spec` is, by the snapshot in force (called again at every swap)."""
        rt = self.rt
        if spec.kind == "outbound":
            # One side per listener, shared by its connections: its route and authority caches then
            # stay warm across connections (a side per connection cost ~10,000 instructions on each
            # new connection, callgrind). It holds no state of a connection.
            side = OutboundSide(rt, spec.name)
            return partial(ServerConn, rt, side)  # no interpreted frame per connection (a lambda is one)
        if spec.kind == "tcp":
            link = next(t for t in rt.snapshot.tcp_links if t.listen == spec.key)
            return lambda: TcpLinkClient(rt, link.source, link.destination)
        if spec.kind == "inbound":
            return lambda: InboundHandshake(rt)
        routes = self.routes
        return lambda: AdminProtocol(routes)

    def _tls(self) -> Any:
        rt = self.rt
        return listener_context(rt.snapshot.trust_bundle, lambda name: rt.table.server_ctx.get(name), rt.keylog)

    async def start(self, socks: dict[str, socket.socket] | None = None) -> None:
        """Serve the snapshot's listeners: bound here (StartupError when one is taken) unless given."""
        rt = self.rt
        specs = self.wanted(rt.snapshot)
        if socks is None:
            socks = {k: v[0] for k, v in bind_all(specs.values()).items()}
        await self.listeners.start(specs, socks)
        rt.spawn(rt.sweeper())
        rt.ready = True

    def reload(self, version: int | None = None) -> None:
        """SIGHUP (or the supervisor's word): read the snapshot file again and swap it in whole, or keep the old one.

        `version`: the supervisor wrote at least this version and sent its
        sockets; a later one in the file has its own message on the way.
        """
        if self.draining is not None:
            return
        try:
            snap = load_snapshot(self.config_path)
        except Exception as e:
            self._rejected(None, e)
            return
        if version is not None and snap.version > version:
            return
        with contextlib.suppress(Exception):  # apply_snapshot logged and recorded why
            self.apply_snapshot(snap)
        if version is not None:
            close_all(self.offered.values())  # offered for a snapshot this worker did not take
            self.offered.clear()

    def offer(self, chan: socket.socket) -> None:
        """The supervisor's message (reader callback): sockets of listeners it bound, then reload."""
        top = None
        while True:
            try:
                msg, fds, _, _ = socket.recv_fds(chan, 65536, 1024)
            except BlockingIOError:
                break
            except OSError:
                msg, fds = b"", []
            if not msg:  # the supervisor is gone: it stops this worker too
                asyncio.get_running_loop().remove_reader(chan.fileno())
                break
            doc = json.loads(msg)
            for key, fd in zip(doc["keys"], fds, strict=True):
                old = self.offered.pop(key, None)
                if old is not None:
                    old.close()
                self.offered[key] = socket.socket(fileno=fd)
            top = max(top or 0, int(doc["version"]))
        if top is not None:
            self.reload(top)

    # --- the control-plane watch's Target (glassmesh.proxy.watch) ---
    reads_file = False

    def current(self) -> Snapshot:
        return self.rt.snapshot

    def _sockets(self, added: list[Spec]) -> dict[str, socket.socket]:
        if not self.supervised:
            return {k: v[0] for k, v in bind_all(added).items()}
        missing = [str(s) for s in added if s.key not in self.offered]
        if missing:
            raise StartupError(f"no socket from the supervisor for {', '.join(missing)}")
        return {s.key: self.offered.pop(s.key) for s in added}

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Swap in a snapshot whole; raises (keeping the old one) when it cannot be used.

        New listeners are bound first (a port taken changes nothing), then
        the table is swapped, then they are served and removed ones drain.
        """
        try:
            if self.draining is not None:
                raise StartupError("the proxy is stopping")
            new = self.wanted(snap)
            change = plan(self.listeners.specs(), new)
            if not self.supervised:
                set_modes(self.listeners.specs(), new)
            socks = self._sockets(change.added)
            # Pools of a local service that goes away would be closed by the swap, requests in flight
            # included: they are set aside and closed once its listeners have drained.
            gone = {ls.name for ls in self.rt.snapshot.local_services} - {ls.name for ls in snap.local_services}
            aside = {k: p for k, p in self.rt.pools.items() if k.source in gone}
            for k in aside:
                del self.rt.pools[k]
            try:
                self.rt.apply(snap)
            except BaseException:
                self.rt.pools.update(aside)
                close_all(socks.values())
                if not self.supervised:
                    for key in socks:
                        unlink_unix(key)
                raise
            drains = self.listeners.update(new, socks).drains
            if aside:
                self.rt.spawn(self._close_after(drains, list(aside.values())))
        except Exception as e:
            self._rejected(snap.version, e)
            raise
        self.last_reload = {"version": snap.version, "accepted": True, "at": time.time()}
        if (change.added or change.removed) and not self.supervised:  # the supervisor says it once for all
            log(f"listeners {change}")
        log(f"snapshot version {snap.version} accepted")

    @staticmethod
    async def _close_after(drains: list[asyncio.Task[None]], pools: list[Any]) -> None:
        if drains:
            await asyncio.wait(drains)
        for p in pools:
            p.close()

    def _rejected(self, version: int | None, e: Exception) -> None:
        self.last_reload = {"version": version, "accepted": False, "reason": str(e), "at": time.time()}
        log(f"snapshot rejected, keeping version {self.rt.snapshot.version}: {e}", "warning")

    async def stop(self) -> None:
        self.listeners.close()
        await self.rt.close()

    def ready_doc(self) -> dict[str, Any]:
        snap = self.rt.snapshot
        doc = {
            "ready": self.rt.ready and self.draining is None,
            "host": snap.host,
            "snapshot_version": snap.version,
            "last_reload": self.last_reload,
            "listeners": self.listeners.addresses(),
            "hot_path": hot_path_doc(),
            "endpoints": self.rt.endpoint_rows(),  # outlier detection's view: which are ejected, for how long
        }
        if self.draining is not None:
            doc["draining"] = d = self.draining.doc()
            doc["reason"] = d["reason"]
        return doc


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


async def _serve_single(config_path: str, snap: Snapshot, opts: Options, access_log: AccessLog | None,
                        admin_unix: str | None = None, supervised: tuple[socket.socket, dict[str, socket.socket]] |
                        None = None, attach: ControlLink | None = None) -> None:
    """One process serving: alone (binding everything, admin included) or as a supervisor's worker."""
    loop = asyncio.get_running_loop()
    w = Worker(config_path, snap, opts.keylog, access_log, supervised=supervised is not None, otlp=opts.otlp)

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

    w.routes = routes = _admin_routes(lambda: w.rt.snapshot, dump, ready)
    admin = None
    if supervised is not None:
        chan, socks = supervised
        admin = await loop.create_unix_server(lambda: AdminProtocol(routes, w.process_route), admin_unix)
        await w.start(socks)
        chan.setblocking(False)
        loop.add_reader(chan.fileno(), w.offer, chan)
    else:
        await w.start()
        log(f"host {snap.host} serving snapshot version {snap.version}: " + ", ".join(w.listeners.addresses())
            + f"; hot path: {hot_path()}")
    if attach is not None:
        await attach.start(w)
    stop, cut = asyncio.Event(), asyncio.Event()
    deadline = StopDeadline("worker" if admin_unix else "proxy", log_error, drain_s=opts.drain_s)
    on_stop_signals(loop, lambda: (cut if stop.is_set() else stop).set(), deadline)
    loop.add_signal_handler(signal.SIGHUP, sd.around_reload(w.reload))
    handed: list[int] = []  # the successor's pid, once a seamless restart handed it everything
    restart = None
    if supervised is None:
        restart = handover.Restarter(w.listeners.sockets, lambda pid: (handed.append(pid), stop.set()))
        loop.add_signal_handler(handover.SIGNAL, restart.request)
        handover.ready(f"serving snapshot version {w.rt.snapshot.version}")
    await stop.wait()
    if handed:
        deadline.arm(loop, f"the handover to pid {handed[0]}")
    else:
        if restart is not None:
            await restart.cancel()
        sd.stopping()
    loop.add_signal_handler(signal.SIGHUP, log, "SIGHUP ignored: the proxy is stopping")
    if restart is not None:
        restart.stopping = True
    # Drain first (listeners close now); the control-plane watch ends meanwhile. Admin answers on, unless
    # the successor does.
    w.draining = Drain(opts.drain_s, f"handed over to pid {handed[0]}" if handed else "stopping (SIGTERM)")
    draining = loop.create_task(drain(w.rt, w.listeners, w.draining, cut, handed=bool(handed)))
    if attach is not None:
        await attach.stop()
    await draining
    if admin is not None:
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


class _Held:
    """The supervisor's data-plane sockets (see listeners.py) and its channel to each worker.

    A port has one SO_REUSEPORT socket per worker, a unix path one socket for
    all. A worker gets its own at fork (closing every other one it
    inherited: a copy left open in a process that never accepts would keep a
    removed port listening) and later ones over its channel, a SEQPACKET
    socketpair carrying `{"version": V, "keys": [...]}` with the sockets.
    """

    def __init__(self, workers: int, specs: dict[str, Spec]) -> None:
        self.workers = workers
        self.specs = specs
        self.socks = bind_all(specs.values(), copies=workers)
        self.chans: list[socket.socket | None] = [None] * workers

    def mine(self, i: int) -> dict[str, socket.socket]:
        return {k: v[i % len(v)] for k, v in self.socks.items()}

    def channel(self, i: int) -> socket.socket:
        """A new channel to worker i (one that is about to be forked); returns the worker's end."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old, self.chans[i] = self.chans[i], ours
        if old is not None:
            old.close()
        ours.setblocking(False)
        return theirs

    def in_child(self, i: int) -> dict[str, socket.socket]:
        """In worker i just forked: close what is not its own; returns its sockets."""
        mine = self.mine(i)
        keep = {id(s) for s in mine.values()}
        for socks in self.socks.values():
            for s in socks:
                if id(s) not in keep:
                    s.close()
        for c in self.chans:
            if c is not None:
                c.close()
        return mine

    def commit(self, version: int, new: dict[str, Spec], fresh: dict[str, list[socket.socket]],
               removed: list[Spec]) -> None:
        """A snapshot is on disk: give every worker its new sockets and the word to reload; let go of removed ones."""
        self.socks.update(fresh)
        keys = list(fresh)
        for i, chan in enumerate(self.chans):
            if chan is None:
                continue
            msg = json.dumps({"version": version, "keys": keys}).encode()
            try:
                socket.send_fds(chan, [msg], [fresh[k][i % len(fresh[k])].fileno() for k in keys])
            except OSError as e:  # a worker being restarted: it forks with the sockets held here
                log(f"cannot reach worker {i}: {e}", "error")
        for spec in removed:
            close_all(self.socks.pop(spec.key, []))
            unlink_unix(spec.key)
        self.specs = new

    def stop_listening(self) -> None:
        """The supervisor stops: let go of its copies of the ports (each worker holds its own until it has drained)."""
        for key, socks in self.socks.items():
            close_all(socks)
            unlink_unix(key)
        self.socks = {}

    def close(self) -> None:
        self.stop_listening()
        for c in self.chans:
            if c is not None:
                c.close()


def _fork_worker(config_path: str, snap: Snapshot, opts: Options, sock: str, held: _Held, i: int,
                 admin: Listeners) -> int:
    theirs = held.channel(i)
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        reseed()
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the supervisor's handler, until the worker's own
            signal.signal(handover.SIGNAL, signal.SIG_IGN)  # a seamless restart is the supervisor's
            handover.forget_in_child()
            forget_handed()
            admin.forget()  # the supervisor's admin port is not ours to keep open
            mine = held.in_child(i)
            access = AccessLog(opts.access_log) if opts.access_log else None
            uvloop.run(_serve_single(config_path, snap, opts, access, sock, (theirs, mine)))
        except BaseException as e:  # noqa: BLE001 - a child must never return into the parent's code
            log(f"worker failed: {e}", "error")
            code = 1
        os._exit(code)
    theirs.close()
    return pid


class _SupervisorTarget:
    """The control-plane watch's view of a supervisor: it checks, binds, writes the file, then the workers reload it."""

    reads_file = True

    def __init__(self, current: dict[str, Snapshot], apply: Callable[[Snapshot], None], socks: list[str]) -> None:
        self._current, self._apply, self._socks = current, apply, socks

    def current(self) -> Snapshot:
        return self._current["snap"]

    def apply_snapshot(self, snap: Snapshot) -> None:
        self._apply(snap)

    async def query(self, name: str, params: dict[str, str]) -> list[Any]:
        """Every worker's answer to a per-process route, over its private unix socket (proxy/asks.py)."""
        target = f"/process/{urllib.parse.quote(name)}?{urllib.parse.urlencode(params)}"

        async def one(sock: str) -> Any:
            try:
                return json.loads(await _get_unix(sock, target))
            except (OSError, RuntimeError, ValueError) as e:
                return {"error": f"worker {os.path.basename(sock)}: {e}"}

        return list(await asyncio.gather(*(one(s) for s in self._socks)))


async def _supervise(config_path: str, snap: Snapshot, opts: Options, attach: ControlLink | None = None,
                     persist: Callable[[Snapshot], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    workers = opts.workers
    import tempfile  # here, not at the top: a proxy with one worker does not hold it (test_proxy_footprint)

    rundir = tempfile.mkdtemp(prefix="glassmesh-proxy-")
    socks = [os.path.join(rundir, f"worker-{i}.sock") for i in range(workers)]
    current = {"snap": snap}
    stopping: dict[str, Drain] = {}  # "drain", once SIGTERMed
    routes: dict[str, Any] = {}
    admin = Listeners(lambda spec: (lambda: AdminProtocol(routes)), lambda: None)
    # Bind everything first: a busy port fails before any worker starts.
    admin_spec = {snap.admin: Spec(snap.admin, "admin")}
    admin_socks = bind_all(admin_spec.values())
    try:
        held = _Held(workers, wanted(snap, admin=False))
    except StartupError:
        close_all(admin_socks[snap.admin])
        raise

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
            "ready": all(d.get("ready") for d in docs) and "drain" not in stopping,
            "host": snap.host,
            "snapshot_version": current["snap"].version,
            "listeners": sorted(map(str, [*held.specs.values(), *admin.specs().values()])),
            "workers": docs,
            "hot_path": hot_path_doc(),
        }
        if attach is not None:
            doc.update(attach.ready_detail())
        if "drain" in stopping:
            d = stopping["drain"]
            d.left = sum(w.get("draining", {}).get("connections", 0) for w in docs)
            doc["draining"] = d.doc()
            doc["reason"] = doc["draining"]["reason"]
        return doc

    routes.update(_admin_routes(lambda: current["snap"], dump, ready))
    runtime_mod.PROCESS_WORKERS = workers
    await admin.start(admin_spec, {snap.admin: admin_socks[snap.admin][0]})
    pids = [_fork_worker(config_path, snap, opts, s, held, i, admin) for i, s in enumerate(socks)]

    def apply(new: Snapshot, write: bool = True) -> None:
        """Check, bind (before anything changes), write the file the workers read, tell them; raises on reject."""
        compile_table(new)  # certificates load, before the workers are told to read it
        specs = wanted(new, admin=False)
        change = plan(held.specs, specs)
        set_modes(held.specs, specs)
        moved = new.admin != current["snap"].admin
        new_admin = bind_all([Spec(new.admin, "admin")]) if moved else {}
        try:
            fresh = bind_all(change.added, copies=workers)
        except StartupError:
            for s in new_admin.values():
                close_all(s)
            raise
        try:
            if write and persist is not None:
                persist(new)
        except BaseException:
            for s in [*fresh.values(), *new_admin.values()]:
                close_all(s)
            for key in fresh:
                unlink_unix(key)
            raise
        current["snap"] = new
        held.commit(new.version, specs, fresh, change.removed)
        if moved:
            admin.update({new.admin: Spec(new.admin, "admin")}, {new.admin: new_admin[new.admin][0]})
            log(f"admin moved to {new.admin}")
        if change.added or change.removed:
            log(f"listeners {change}")

    def reload() -> None:
        """SIGHUP: the snapshot file again, for every worker."""
        try:
            apply(load_snapshot(config_path), write=False)
        except Exception as e:  # noqa: BLE001 - any reason to refuse it is logged, the old one serves on
            log(f"snapshot rejected: {e}", "warning")

    log(f"host {snap.host}: {workers} workers on " + ", ".join(sorted(map(str, held.specs.values())))
        + f"; admin {snap.admin}")
    stop, cut = asyncio.Event(), asyncio.Event()
    # Its deadline outlasts its workers' (each drains, then has deadline_s() to close).
    deadline = StopDeadline("supervisor", log_error, drain_s=opts.drain_s + deadline_s())
    on_stop_signals(loop, lambda: (cut if stop.is_set() else stop).set(), deadline)
    loop.add_signal_handler(signal.SIGHUP, sd.around_reload(reload))
    handed: list[int] = []
    # Every copy of every port (one per worker: the successor's workers take them in turn) and admin.
    restart = handover.Restarter(lambda: {**{k: list(v) for k, v in held.socks.items()}, **admin.sockets()},
                                 lambda pid: (handed.append(pid), stop.set()))
    loop.add_signal_handler(handover.SIGNAL, restart.request)
    if attach is not None:
        await attach.start(_SupervisorTarget(current, apply, socks))
    notified = asyncio.create_task(_ready_once(ready, stop))
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
                    log(f"worker {i} (pid {pid}) exited with status {status}; restarting it", "error")
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(socks[i])
                    pids[i] = _fork_worker(config_path, current["snap"], opts, socks[i], held, i, admin)
    finally:
        notified.cancel()
        if handed:  # the successor serves admin and every port: nothing of theirs is closed or removed here
            deadline.arm(loop, f"the handover to pid {handed[0]}")
            admin.stop_accepting(keep=(), handed=True)
        else:
            await restart.cancel()
            sd.stopping()
        restart.stopping = True
        # Each worker drains (drain.py). The ports close with the workers' copies, which take what waits in
        # their queues first: the supervisor's copies go now. Admin answers until the workers are gone.
        loop.remove_signal_handler(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, log, "SIGHUP ignored: the proxy is stopping")
        stopping["drain"] = Drain(opts.drain_s, f"handed over to pid {handed[0]}" if handed else "stopping (SIGTERM)")
        held.stop_listening()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if attach is not None:
            await attach.stop()
        await _reap(pids, opts.drain_s + deadline_s() + 1, cut)
        admin.close()
        held.close()
        for s in socks:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s)
        with contextlib.suppress(OSError):
            os.rmdir(rundir)


async def _ready_once(ready: Callable[[], Coroutine[Any, Any, dict[str, Any]]], stop: asyncio.Event) -> None:
    """READY=1 to systemd once every worker answers ready: bound sockets queue, only workers accept."""
    while not stop.is_set():
        if (await ready()).get("ready"):
            handover.ready("serving")
            return
        await asyncio.sleep(0.05)


async def _reap(pids: list[int], limit: float, cut: asyncio.Event) -> None:
    """Wait for the workers (draining) to exit, up to `limit` s; then SIGKILL. A second stop signal is passed on."""
    deadline = time.monotonic() + limit
    passed = False
    left = list(pids)
    while left and time.monotonic() < deadline:
        if cut.is_set() and not passed:
            passed = True
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        for pid in list(left):
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    left.remove(pid)
            except ChildProcessError:
                left.remove(pid)
        await asyncio.sleep(0.05)
    for pid in left:
        log(f"worker pid {pid} still running {limit:g} s after SIGTERM: killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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
        # The process's own symbols, libc's among them: ctypes.util.find_library would run ldconfig in a
        # subprocess, and import shutil and tempfile, to find the library already loaded.
        libc = ctypes.CDLL(None)
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 1 << 20)
        libc.mallopt(m_trim_threshold, 4 << 20)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


async def serve(config_path: str, snap: Snapshot, opts: Options, attach: ControlLink | None = None,
                persist: Callable[[Snapshot], None] | None = None) -> None:
    """Serve `snap` until SIGTERM: the one start-up of every proxy, from a file or under a control plane.

    `config_path` is the file SIGHUP (and, with workers, every swap) reads
    again; `attach` the control-plane watch, started once the listeners are
    up; `persist` writes a snapshot the watch accepted to that file (with
    workers, the supervisor writes it before they are told to read it).
    """
    if opts.workers <= 1:
        access = AccessLog(opts.access_log) if opts.access_log else None
        await _serve_single(config_path, snap, opts, access, attach=attach)
    else:
        await _supervise(config_path, snap, opts, attach=attach, persist=persist)


def launch(main: Coroutine[Any, Any, None]) -> None:
    """Run a proxy's event loop (uvloop), with the allocator tuned for its TLS buffers."""
    _tune_malloc()
    warn_if_interpreted()
    signal.signal(handover.SIGNAL, signal.SIG_IGN)  # until the proxy serves and handles it: never a death
    try:
        handover.inherit()
    except StartupError:
        main.close()
        raise
    uvloop.run(main)


def run(config_path: str, workers: int = 1, keylog: str | None = None, access_log: str | None = None,
        drain_s: float = DRAIN_TIMEOUT_S, otlp: str | None = None) -> None:
    """`glassmesh proxy --config FILE`: load, check and serve; SnapshotError/StartupError with a clear message."""
    snap = load_snapshot(config_path)
    try:
        compile_table(snap)  # certificates load, or we stop here with a clear message
    except Exception as e:
        raise StartupError(str(e)) from None
    launch(serve(config_path, snap, Options(workers, keylog, access_log, drain_s, otlp)))
