"""The sockets a proxy accepts on, kept in step with the snapshot in force (as nginx and Envoy do on reload).

A snapshot names its listeners (`wanted`): admin, inbound (while the host
has local services), one outbound port or unix socket per local service, one
port per tcp link. When a new snapshot comes, the listeners it adds are bound
*before* anything is swapped, so a port that is taken rejects the snapshot
with the reason and changes nothing; then the table is swapped and the new
listeners are served. A listener it removes stops accepting at once (its port
refuses connections, its unix socket file is removed) and its open
connections finish: an HTTP connection closes after the response in flight
(an idle one at once), anything else (a tcp link, a WebSocket) is closed after
DRAIN_S. A listener is keyed by what is bound (address or path); one whose
meaning changes (another service's outbound on the same port, a tcp link to
another destination) keeps its socket and serves the new meaning.

With --workers N the supervisor binds every listener and gives each worker its
own sockets: one SO_REUSEPORT socket per worker for a port (the kernel spreads
connections over the workers, as before) and one shared socket for a unix path
(unix sockets cannot be shared by SO_REUSEPORT). Workers forked later inherit
theirs; running workers get the new ones over a unix socket (SCM_RIGHTS, see
server.py). Binding in one place means one decision per snapshot (bound, or
rejected with the reason, before any worker is told), and a socket outlives a
worker that dies: connections waiting in its queue are taken by the worker
started in its place instead of being reset.

A proxy started by a seamless restart (handover.py) is handed its
predecessor's listening sockets: `bind` takes a handed one for its key
instead of binding anew (the same socket, the same accept queue: nothing is
refused in between), and a unix socket file is then neither made again nor
removed by either process until the handover is done (`settle`, `give_away`).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from glassmesh.model.snapshot import Snapshot, SnapshotError, split_address
from glassmesh.proxy.accepted import Accepted, is_open

DRAIN_S = 30.0  # how long connections of a removed listener may run on before they are closed
# Unix socket files this process created, as (device, inode): one that a proxy started since (a restart
# binds the path anew) is no longer ours to remove.
_made: dict[str, tuple[int, int]] = {}
# Unix socket paths this process must not remove: handed to a successor, or taken from a predecessor
# whose handover is not done yet (if this process fails to start, the predecessor serves them on).
_not_ours: set[str] = set()
# Sockets handed over by the proxy this one replaces (handover.py), by key, until taken or settled.
_handed: dict[str, list[socket.socket]] = {}
_HANDSHAKE_S = 60.0  # a protocol made for a connection that never came up is forgotten after this


class StartupError(Exception):
    """A listener cannot be bound (or some other local reason stops the proxy from serving)."""


@dataclass(frozen=True)
class Spec:
    """One listener: what is bound (`key`, an address or a unix socket path) and what it is for."""

    key: str
    kind: str  # admin | inbound | outbound | tcp
    name: str = ""  # outbound: the local service; tcp: "source -> destination"
    mode: str = "0660"  # unix sockets only
    group: str | None = None

    @property
    def unix(self) -> bool:
        return self.key.startswith("/")

    @property
    def tls(self) -> bool:
        return self.kind == "inbound"

    @property
    def role(self) -> str:
        return {"outbound": f"{self.name} outbound", "tcp": "tcp link"}.get(self.kind, self.kind)

    def __str__(self) -> str:
        return f"{self.role} {self.key}"


def wanted(snap: Snapshot, admin: bool = True) -> dict[str, Spec]:
    """Every listener `snap` asks for, by key (admin only for the process that serves it)."""
    specs = [Spec(snap.admin, "admin")] if admin else []
    if snap.local_services:
        specs.append(Spec(snap.inbound, "inbound"))
    for ls in snap.local_services:
        if ls.outbound:
            specs.append(Spec(ls.outbound, "outbound", ls.name))
        if ls.outbound_socket:
            specs.append(Spec(ls.outbound_socket, "outbound", ls.name, ls.outbound_socket_mode,
                              ls.outbound_socket_group))
    specs += [Spec(t.listen, "tcp", f"{t.source} -> {t.destination}") for t in snap.tcp_links]
    return {s.key: s for s in specs}


@dataclass
class Plan:
    added: list[Spec]
    removed: list[Spec]
    drains: list[asyncio.Task[None]] = field(default_factory=list)  # of the removed ones, once under way

    def __str__(self) -> str:
        parts = [f"added: {', '.join(map(str, self.added))}"] * bool(self.added)
        parts += [f"removed: {', '.join(map(str, self.removed))}"] * bool(self.removed)
        return "; ".join(parts)


def plan(old: dict[str, Spec], new: dict[str, Spec]) -> Plan:
    """What changes from `old` to `new`; SnapshotError for the one change a running proxy cannot make.

    An address that turns from a TLS listener (inbound) into a plain one or
    back would have to be closed and bound again, and a port cannot be
    bound twice: that one needs a restart (it is never retried).
    """
    for key in sorted(old.keys() & new.keys()):
        if old[key].tls != new[key].tls:
            raise SnapshotError(f"{key} changes from {old[key].role} to {new[key].role}; that needs a proxy restart")
    return Plan([new[k] for k in new if k not in old], [old[k] for k in old if k not in new])


def set_modes(old: dict[str, Spec], new: dict[str, Spec]) -> None:
    """Kept unix sockets whose mode or group changed get the new ones (by the process that bound them)."""
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key], new[key]
        if b.unix and (a.mode, a.group) != (b.mode, b.group):
            try:
                os.chmod(key, int(b.mode, 8))
                if b.group is not None:
                    os.chown(key, -1, grp.getgrnam(b.group).gr_gid)
            except (OSError, KeyError) as e:
                raise StartupError(f"cannot give {key} mode {b.mode}" + (f" and group {b.group}" if b.group else "")
                                   + f": {e}") from None


# --------------------------------------------------------------------------- binding


def _bind_unix(spec: Spec) -> socket.socket:
    """A unix socket whose permissions say who may call as its service."""
    path = spec.key
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # left by an earlier run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mode = int(spec.mode, 8)
    try:
        # Created with its final mode (the umask narrows bind's 0777): between a bind and a chmod,
        # any local process could connect and call as the service.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        if spec.group is not None:
            os.chown(path, -1, grp.getgrnam(spec.group).gr_gid)
        st = os.lstat(path)
        _made[path] = (st.st_dev, st.st_ino)
    except (OSError, KeyError) as e:
        sock.close()
        raise StartupError(f"cannot listen on {path}: {e}") from None
    return sock


def bind_address(addr: str) -> socket.socket:
    """A listening TCP socket on `addr`; StartupError naming the address when it is taken.

    Always SO_REUSEPORT: the workers of one proxy share a port so, and so do
    an old proxy that drains and the new one started in its place (a restart
    that refuses no connection). A port held by any other program (without
    SO_REUSEPORT, or as another user) is still refused.
    """
    host, port = split_address(addr)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {addr}: {e.strerror}") from None
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def hand_in(socks: dict[str, list[socket.socket]]) -> None:
    """The sockets a predecessor handed over (handover.py): `bind` takes them before binding anything."""
    _handed.update(socks)
    _not_ours.update(k for k in socks if k.startswith("/"))


def _take(spec: Spec, copies: int) -> list[socket.socket]:
    """Handed-over sockets for `spec`: all of a unix path's (one), up to `copies` of a port's (the rest closed:
    the predecessor's workers still hold those and take what waits in them as they drain)."""
    got = _handed.pop(spec.key, [])
    keep = got[:1] if spec.unix else got[:copies]
    close_all(got[len(keep):])
    for s in keep:
        s.setblocking(False)
    if keep and spec.unix:
        try:  # this snapshot's mode and group, as a socket bound here would have
            os.chmod(spec.key, int(spec.mode, 8))
            if spec.group is not None:
                os.chown(spec.key, -1, grp.getgrnam(spec.group).gr_gid)
        except (OSError, KeyError) as e:
            close_all(keep)
            raise StartupError(f"cannot give {spec.key} mode {spec.mode}: {e}") from None
    return keep


def settle() -> None:
    """The handover is done (this process serves, its predecessor drains): the unix socket files taken over
    are this process's to remove from now on, and handed sockets no listener wants are closed."""
    for key in list(_not_ours):
        if key.startswith("/") and key not in _handed:
            with contextlib.suppress(OSError):
                st = os.lstat(key)
                _made[key] = (st.st_dev, st.st_ino)
    _not_ours.clear()
    for key, socks in list(_handed.items()):
        close_all(socks)
        unlink_unix(key)  # a unix socket this snapshot no longer has: nobody serves it now
    _handed.clear()


def forget_handed() -> None:
    """In a worker just forked: handed sockets no listener took are not its to hold (the parent settles them)."""
    for socks in _handed.values():
        close_all(socks)
    _handed.clear()


def give_away(keys: Iterable[str]) -> None:
    """This process handed these listeners to its successor: never remove their unix socket files."""
    for key in keys:
        if key.startswith("/"):
            _not_ours.add(key)
            _made.pop(key, None)


def bind(spec: Spec, copies: int = 1) -> list[socket.socket]:
    """`copies` sockets for one listener: SO_REUSEPORT ones for a port, one for a unix path.

    Handed-over ones first (a seamless restart); only what is missing is bound.
    """
    out = _take(spec, copies)
    if spec.unix:
        if out:
            return out
        sock = _bind_unix(spec)
        sock.listen(4096)
        sock.setblocking(False)
        return [sock]
    try:
        for _ in range(copies - len(out)):
            out.append(bind_address(spec.key))
    except StartupError:
        close_all(out)
        raise
    return out


def bind_all(specs: Iterable[Spec], copies: int = 1) -> dict[str, list[socket.socket]]:
    """Bind every listener or none: on the first failure the ones bound are closed and it raises."""
    done: dict[str, list[socket.socket]] = {}
    try:
        for spec in specs:
            done[spec.key] = bind(spec, copies)
    except StartupError:
        for socks in done.values():
            close_all(socks)
        for key in done:
            unlink_unix(key)
        raise
    return done


def close_all(socks: Iterable[socket.socket]) -> None:
    for s in socks:
        s.close()


def unlink_unix(key: str) -> None:
    """Remove a unix socket file this process made (not one a proxy started since made in its place)."""
    if key.startswith("/") and key not in _not_ours:
        with contextlib.suppress(OSError):
            st = os.lstat(key)
            made = _made.get(key)
            if stat.S_ISSOCK(st.st_mode) and (made is None or made == (st.st_dev, st.st_ino)):
                os.unlink(key)
                _made.pop(key, None)


# --------------------------------------------------------------------------- serving


Factory = Callable[[], Any]


def _graceful(proto: Any) -> None:
    """Close an HTTP client connection after the response in flight (at once when idle); a peer's
    multiplexed one once its streams are done (GOAWAY: it opens no more); others run on."""
    from glassmesh.proxy.http import ServerConn  # the compiled connection class (import cost: none here)
    from glassmesh.proxy.mux import MuxConnection

    t = getattr(proto, "transport", None)
    if t is None or t.is_closing():
        return
    conn = t.get_protocol() if hasattr(t, "get_protocol") else proto  # the inbound handshake hands over
    if isinstance(conn, ServerConn):
        conn.closing = True  # its next response says `connection: close`
        # Idle after a request: closed now. One that has not sent its first request yet (just accepted,
        # its request on the way) gets it answered; closing it would reset a request already sent.
        if conn.between_requests():
            conn.flush()
    elif isinstance(conn, MuxConnection):
        conn.go_away()


class Listener:
    """A bound socket this process serves, the meaning it has now, and the connections it accepted."""

    def __init__(self, spec: Spec, sock: socket.socket, factory: Factory) -> None:
        self.spec, self.sock = spec, sock
        self.server: asyncio.AbstractServer | None = None
        # The protocol factory the event loop calls, native (accepted.py), recording each connection.
        self.accepted = Accepted(factory, _HANDSHAKE_S)
        self.accept: Factory = self.accepted.accept

    @property
    def factory(self) -> Factory:
        return self.accepted.factory

    @factory.setter
    def factory(self, f: Factory) -> None:
        self.accepted.factory = f

    def open_conns(self, handshake_s: float) -> list[Any]:
        """Its connections still open, and those that may still be in their TLS handshake."""
        return self.accepted.open_conns(handshake_s)


class Listeners:
    """The listeners one process serves; `update` moves them to a new snapshot's set.

    `make(spec)` gives the protocol factory of a listener (asked again at
    every update, so a kept listener serves its new meaning); `tls()` the
    context of a TLS one (inbound); `owns_paths`: this process bound the unix
    sockets and removes their files.
    """

    def __init__(self, make: Callable[[Spec], Factory], tls: Callable[[], Any], owns_paths: bool = True,
                 handshake_timeout: Callable[[], float] = lambda: 10.0) -> None:
        self.make = make
        self.tls = tls
        self.owns_paths = owns_paths
        self.handshake_timeout = handshake_timeout
        self.by_key: dict[str, Listener] = {}
        self.draining: set[asyncio.Task[None]] = set()
        # Connections taken from the queue of a listener that stopped accepting, being set up (a drain
        # that ended before they are would reset them).
        self.adopting: set[asyncio.Task[None]] = set()

    def specs(self) -> dict[str, Spec]:
        return {k: lst.spec for k, lst in self.by_key.items()}

    def addresses(self) -> list[str]:
        return sorted(str(lst.spec) for lst in self.by_key.values())

    async def _serve(self, lst: Listener) -> None:
        kw: dict[str, Any] = {}
        if lst.spec.tls:
            kw = {"ssl": self.tls(), "ssl_handshake_timeout": self.handshake_timeout()}
        loop = asyncio.get_running_loop()
        if lst.spec.unix:
            lst.server = await loop.create_unix_server(lst.accept, sock=lst.sock, **kw)
        else:
            lst.server = await loop.create_server(lst.accept, sock=lst.sock, **kw)

    async def start(self, new: dict[str, Spec], socks: dict[str, socket.socket]) -> None:
        """Serve every listener of `new` now (the first snapshot): sockets bound, one per key."""
        for key, spec in new.items():
            lst = self.by_key[key] = Listener(spec, socks[key], self.make(spec))
            await self._serve(lst)

    def update(self, new: dict[str, Spec], socks: dict[str, socket.socket]) -> Plan:
        """Move to `new`: serve the added ones (bound already, in `socks`), drain the removed ones.

        Called once the snapshot is swapped in; the added ones are served by
        a task (their sockets already listen, so a connection that comes
        meanwhile waits in the queue).
        """
        p = plan(self.specs(), new)
        p.drains = [self.retire(self.by_key.pop(spec.key)) for spec in p.removed]
        for key, lst in self.by_key.items():  # kept: the new meaning (e.g. a tcp link's destination)
            lst.spec = new[key]
            lst.factory = self.make(lst.spec)
        fresh = []
        for spec in p.added:
            lst = self.by_key[spec.key] = Listener(spec, socks[spec.key], self.make(spec))
            fresh.append(lst)
        if fresh:
            self._spawn(self._serve_all(fresh))
        return p

    async def _serve_all(self, fresh: list[Listener]) -> None:
        for lst in fresh:
            if self.by_key.get(lst.spec.key) is lst:  # not removed again meanwhile
                await self._serve(lst)

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.draining.add(task)
        task.add_done_callback(self.draining.discard)
        return task

    def _stop_accepting(self, lst: Listener, handed: bool = False) -> None:
        """Close the listening socket; connections already in its accept queue are served, not reset.

        Closing a listening socket resets what waits in its queue, even when
        another process listens on the same port (SO_REUSEPORT keeps one queue
        per socket): they are taken first, between the event loop's last accept
        and the close. Not so for a socket `handed` to a successor: the very
        same socket stays open there, and its queue is the successor's.
        """
        if lst.server is not None:
            lst.server.close()  # the loop's copy: no more accepts there
        waiting: list[socket.socket] = []
        if not handed:
            with contextlib.suppress(OSError):
                lst.sock.setblocking(False)
                while True:
                    waiting.append(lst.sock.accept()[0])
        lst.sock.close()
        if self.owns_paths:
            unlink_unix(lst.spec.key)
        if waiting:
            task = self._spawn(self._adopt(lst, waiting))
            self.adopting.add(task)
            task.add_done_callback(self.adopting.discard)

    async def _adopt(self, lst: Listener, socks: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        kw: dict[str, Any] = {}
        if lst.spec.tls:
            kw = {"ssl": self.tls(), "ssl_handshake_timeout": self.handshake_timeout()}

        async def one(sock: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(lst.accept, sock, **kw)
            except (TimeoutError, OSError):  # a handshake that failed: as it would have on the listener
                sock.close()

        await asyncio.gather(*(one(s) for s in socks))

    def stop_accepting(self, keep: tuple[str, ...] = ("admin",), handed: bool = False) -> list[Listener]:
        """The proxy stops (SIGTERM): every listener but those of kinds `keep` stops accepting now.

        `handed`: a successor serves these very sockets (handover.py): their
        queues are left to it. Returns them: their open connections are the
        ones still in flight.
        """
        gone = [lst for lst in self.by_key.values() if lst.spec.kind not in keep]
        for lst in gone:
            del self.by_key[lst.spec.key]
            self._stop_accepting(lst, handed)
        return gone

    def sockets(self) -> dict[str, list[socket.socket]]:
        """Every listening socket served here, by key: what a seamless restart hands over."""
        return {k: [lst.sock] for k, lst in self.by_key.items()}

    def retire(self, lst: Listener, drain_s: float = DRAIN_S) -> asyncio.Task[None]:
        """Stop accepting on `lst` now; its connections finish (HTTP ones close when idle), up to drain_s."""
        self._stop_accepting(lst)
        return self._spawn(self._drain(lst, drain_s))

    async def _drain(self, lst: Listener, drain_s: float) -> None:
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            conns = lst.open_conns(self.handshake_timeout())  # again each time: adopted ones come late
            if not conns:
                return
            for p in conns:
                _graceful(p)
            await asyncio.sleep(0.2)
        from glassmesh.proxy.log import log

        conns = [p for p in lst.open_conns(0.0) if is_open(p)]
        if conns:
            log(f"closing {len(conns)} connection{'s' * (len(conns) != 1)} of removed listener {lst.spec} "
                f"after {drain_s:.0f}s")
        for p in conns:
            if is_open(p):
                p.transport.close()

    def forget(self) -> None:
        """In a process just forked: close its copies of these sockets (the parent serves them).

        The event loop's own duplicate of each (uvloop dups a socket it
        serves) is closed too: a copy left open would keep a port listening
        after the parent closed it.
        """
        for lst in self.by_key.values():
            fds = {lst.sock.detach()}
            if lst.server is not None:
                fds.update(s.fileno() for s in lst.server.sockets)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        """Stop accepting on every listener (the proxy stops); connections are the caller's to close."""
        for lst in self.by_key.values():
            self._stop_accepting(lst)
        self.by_key.clear()
        for t in list(self.draining):
            t.cancel()
