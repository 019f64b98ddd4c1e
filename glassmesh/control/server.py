"""`glassmesh control`: the store, the compile loop and the HTTP API in one process (one replica).

Errors become JSON with the right status (validation 400 with every problem's
line and field, conflict 409, missing 404, store down 503) so that the CLI can
print one clear line, and a failing request never takes the replica down.

SIGTERM (or SIGINT) ends the replica within about a second even while proxies
hold long-polls open: the shutdown hook sets an event that `end_long_polls`
waits on beside each snapshot long-poll, and every open one is answered 503
"shutting down" at once (a proxy with several replicas moves to the next one
straight away) instead of aiohttp waiting for each to run out its time.

At start, before anything listens, the replica takes the CA it signs with
from the store (`identity.shared_ca`), so all replicas on one etcd share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from glassmesh.control import api, asks, doctor, explain, identity_api, links, proxy_api, tap_api
from glassmesh.control import dashboard as dashboard_api
from glassmesh.control.asks import ASKS, Asks
from glassmesh.control.config import ConfigError
from glassmesh.control.identity import Identity, IdentityError, shared_ca
from glassmesh.control.metrics import HoldCounter
from glassmesh.control.operators import ensure_admin_credential
from glassmesh.control.ops import NotFound
from glassmesh.control.plane import Plane
from glassmesh.control.store import Conflict, Store, StoreError
from glassmesh.control.trace import add_routes as add_trace_routes
from glassmesh.files import check_private, private_dir
from glassmesh.logfmt import write
from glassmesh.stopping import StopDeadline, cancel_and_wait, on_stop_signals
from glassmesh.systemd import notify as sd

log = logging.getLogger("glassmesh.control")


def say(msg: str, level: str = "info") -> None:
    """A start-up line for the operator, on stdout (the address, the CA's fingerprint), in the log format."""
    write("glassmesh control", msg, level, sys.stdout)


HEARTBEAT_S = 5.0
# On stop, how long removing this replica's record may take. Shorter than the etcd client's request
# timeout (2 s) on purpose: with aiohttp 3.14 an outer timeout that fires in the same loop turn as the
# request's own is lost (aiohttp turns both into its TimeoutError), and the client retries on.
GOODBYE_S = 1.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLOSING = web.AppKey("closing", asyncio.Event)  # set when the replica starts to shut down
BEAT_NOW = web.AppKey("beat_now", asyncio.Event)  # set to announce this replica again at once
LONG_POLL_ROUTES = frozenset({"/v1/hosts/{host}/snapshot", "/v1/hosts/{host}/asks"})


class StartupError(Exception):
    """The control plane cannot start (bad --store, unreadable data dir, port taken)."""


def open_store(spec: str, data_dir: str, etcd_tls: EtcdTls | None = None) -> Store:
    """`sqlite` (a file in data_dir), or etcd: `etcds://h1:2379,h2:2379` over TLS, `etcd://` on loopback only.

    etcd holds everything, the CA key included, so it is spoken to over TLS
    with a client certificate (etcd's --client-cert-auth); plain etcd:// is
    allowed only when every member is on loopback, where only this machine's
    users can reach it.
    """
    if spec == "sqlite":
        from glassmesh.control.store_sqlite import SqliteStore

        private_dir(data_dir)
        return SqliteStore(os.path.join(data_dir, "control.sqlite"))
    if spec.startswith(("etcd://", "etcds://")):
        from glassmesh.control.store_etcd import EtcdStore

        scheme, _, rest = spec.partition("://")
        members = [m for m in rest.strip("/").split(",") if m]
        if not members:
            raise StartupError(f"--store {spec}: no etcd member given")
        if scheme == "etcd":
            remote = [m for m in members if not _loopback(m)]
            if remote:
                raise StartupError(f"--store {spec}: {remote[0]} is not on loopback, and etcd holds the CA key: "
                                   f"use etcds://... with --etcd-ca, --etcd-cert and --etcd-key")
            if etcd_tls is not None:
                raise StartupError("--etcd-ca/--etcd-cert/--etcd-key need an etcds:// store")
            return EtcdStore(members)
        if etcd_tls is None:
            raise StartupError(f"--store {spec}: an etcds:// store needs --etcd-ca (and --etcd-cert, --etcd-key "
                               f"for a client certificate)")
        return EtcdStore([f"https://{m}" for m in members], ssl_context=etcd_tls.context())
    raise StartupError(f"--store must be 'sqlite', 'etcds://host:port[,host:port...]' or (loopback only) "
                       f"'etcd://127.0.0.1:port', got {spec!r}")


def _loopback(member: str) -> bool:
    host = member.rpartition(":")[0].strip("[]") if ":" in member else member
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class EtcdTls:
    """How this replica proves itself to etcd and checks etcd: a CA, and a client certificate and key."""

    ca: str
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # etcd is not ours: 1.2 with its AEAD suites is its floor
        if self.cert:
            if self.key:
                check_private(self.key, "etcd client key")
            ctx.load_cert_chain(self.cert, self.key)
        return ctx


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ConfigError as e:
        return api.error(400, "invalid config", file=e.filename, problems=[p.to_json() for p in e.problems])
    except Conflict as e:
        return api.error(409, str(e))
    except NotFound as e:
        return api.error(404, str(e.args[0]))
    except StoreError as e:
        return api.error(503, f"store unavailable: {e}")
    except IdentityError as e:  # a refused join or certificate request: 400/403/404 with the reason
        return api.error(e.status, str(e))


@web.middleware
async def end_long_polls(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer an open snapshot long-poll with 503 as soon as the replica begins to shut down.

    The handler runs as its own task beside a wait on the CLOSING event;
    whichever ends first decides. Without this, aiohttp's shutdown waits for
    each long-poll (up to minutes), and then cuts it off without an answer.
    """
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in LONG_POLL_ROUTES:
        return await handler(request)
    closing = request.app[CLOSING]
    if closing.is_set():
        return _shutting_down()
    work = asyncio.ensure_future(handler(request))
    stop = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(stop, work)  # this handler's own cancellation (client gone) is not swallowed
    if work.cancelled():
        return _shutting_down()
    return work.result()


def _shutting_down() -> web.Response:
    resp = api.error(503, "this control-plane replica is shutting down: ask another replica, or again later")
    resp.force_close()
    return resp


def make_app(store: Store, trust_domain: str = "glassmesh.local", replica_id: str = "",
             listen: str = "", dns_servers: Sequence[str] = (), identity: Identity | None = None) -> web.Application:
    """One app for both listeners; `identity_api.listener_guard` keeps each route on its own listener."""
    app = web.Application(middlewares=[errors, identity_api.listener_guard, end_long_polls],
                          client_max_size=8 << 20)
    if identity is not None:
        app[identity_api.IDENTITY] = identity
    closing = app[CLOSING] = asyncio.Event()
    beat_now = app[BEAT_NOW] = asyncio.Event()

    async def wake_long_polls(app: web.Application) -> None:
        closing.set()

    app.on_shutdown.append(wake_long_polls)
    # The compile loop's store counts the changes it holds back, for /metrics (metrics.HoldCounter).
    plane = Plane(HoldCounter(store), trust_domain, dns_servers)
    replica_id = replica_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    app[api.PLANE], app[api.STORE], app[api.REPLICA] = plane, store, replica_id
    app[ASKS] = Asks()
    api.add_routes(app)
    proxy_api.add_routes(app)
    identity_api.add_routes(app)
    asks.add_routes(app)
    doctor.add_routes(app)  # GET /v1/check
    links.add_routes(app)  # GET /v1/links
    explain.add_routes(app)  # GET /v1/explain
    tap_api.add_routes(app)
    dashboard_api.add_routes(app)  # the browser's page and its logins, on the operator listener only
    add_trace_routes(app)  # GET /v1/trace/{id}

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        plane.start()
        beat = asyncio.create_task(_heartbeat(store, replica_id, listen, identity, beat_now))
        yield
        await cancel_and_wait(beat)
        await plane.stop()
        # A goodbye, best effort: the record expires anyway, and a store that does not answer
        # (etcd frozen) must not hold the stop for its whole retry deadline.
        with contextlib.suppress(StoreError, TimeoutError):
            async with asyncio.timeout(GOODBYE_S):
                await store.delete_record("replica", replica_id)
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _serve_proxy_listener(runner: web.AppRunner, identity: Identity, proxy_listen: str, explicit: bool,
                                tls_dir: str) -> None:
    """The mTLS listener for proxies (see identity_api): joins, certificates, snapshots, reports."""
    phost, _, pport = proxy_listen.rpartition(":")
    ctx = identity.server_ssl(tls_dir)
    try:
        await web.TCPSite(runner, phost.strip("[]") or "127.0.0.1", int(pport), ssl_context=ctx,
                          reuse_address=True).start()
    except OSError as e:
        if explicit:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {proxy_listen} (--proxy-listen): {e.strerror or e}") from None
        log.warning("proxy listener not started: cannot listen on %s (%s); proxies cannot join this replica "
                    "(give --proxy-listen ADDR)", proxy_listen, e.strerror or e)
        return
    identity.proxy_url = f"https://{proxy_listen}"
    log.info("proxy listener (mTLS) on https://%s, trust domain %s", proxy_listen, identity.trust_domain)
    say(f"proxies join and watch on https://{proxy_listen} (mutual TLS, CA sha256 {identity.ca_sha256})")


async def _heartbeat(store: Store, replica_id: str, listen: str, identity: Identity | None = None,
                     now: asyncio.Event | None = None) -> None:
    """Announce this replica (a record with a TTL) so `status` lists the live ones.

    The record carries the proxy listener's URL once it listens (`now` is set
    then, for an announcement without waiting for the next beat), so that
    `host add` through any replica can print every replica's URL for --control.
    """
    started = time.time()
    while True:
        rec = {"listen": listen, "started": started, "pid": os.getpid(), "seen": time.time()}
        if identity is not None and identity.proxy_url:
            rec["proxy_url"] = identity.proxy_url
        with contextlib.suppress(StoreError):
            await store.put_record("replica", replica_id, rec, ttl_s=3 * HEARTBEAT_S)
        if now is None:
            await asyncio.sleep(HEARTBEAT_S)
            continue
        with contextlib.suppress(TimeoutError):
            # Not wait_for: in 3.11 a cancel arriving as the event is set is swallowed, and the stop
            # that cancelled this task then waits for it forever (seen: SIGTERM during start-up).
            async with asyncio.timeout(HEARTBEAT_S):
                await now.wait()
        now.clear()


async def serve(store: Store, listen: str, trust_domain: str, dns_servers: Sequence[str] = (),
                identity: Identity | None = None, proxy_listen: str = "", proxy_listen_explicit: bool = True,
                tls_dir: str = "", ca_passphrase: bytes | None = None, insecure_proxy_listen: str = "",
                admin_credential: str = "") -> None:
    """Run until SIGINT/SIGTERM. dns_servers: "ip[:port]" for DNS discovery (default: /etc/resolv.conf).

    With `identity`, a second listener on `proxy_listen` serves the proxy routes
    over TLS (client certificates from the CA); its server certificate is
    written to `tls_dir`. When that address was only the default and is taken,
    the replica runs without it (and says so) rather than not at all.
    """
    host, _, port = listen.rpartition(":")
    # First of all: a SIGTERM while the replica starts (its port may be open already) stops it cleanly.
    stop = asyncio.Event()
    on_stop_signals(asyncio.get_running_loop(), stop.set, StopDeadline("control plane", log.warning))
    if insecure_proxy_listen and not _loopback(insecure_proxy_listen):
        raise StartupError(f"--insecure-proxy-listen {insecure_proxy_listen}: only a loopback address may serve "
                           f"proxies without mutual TLS")
    if identity is not None:
        # Before anything listens: every replica on this store signs with (and serves) the same CA.
        try:
            identity.ca = await shared_ca(store, identity.ca, tls_dir or None, ca_passphrase)
        except BaseException:
            await store.close()  # the replica does not start: leave no connection to the store open
            raise
    app = make_app(store, trust_domain, listen=listen, dns_servers=dns_servers, identity=identity)
    listeners = app[identity_api.LISTENERS] = {int(port): identity_api.OPERATOR_LISTENER}
    if proxy_listen:
        listeners[int(proxy_listen.rpartition(":")[2])] = identity_api.PROXY_LISTENER
    if insecure_proxy_listen:
        listeners[int(insecure_proxy_listen.rpartition(":")[2])] = identity_api.INSECURE_LISTENER
    # Long-polls are answered at once on shutdown (end_long_polls); a second is for anything else in flight.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    ctx = identity.server_ssl(tls_dir) if identity is not None else None
    scheme = "https" if ctx is not None else "http"
    if identity is not None and admin_credential:  # before the port opens: whoever sees it open can call
        where = ensure_admin_credential(identity, admin_credential, f"{scheme}://{listen}")
        if where:
            say(f"wrote the first operator's credential (admin) to {where}; copy it to "
                f"~/.config/glassmesh/operator.pem, or set GLASSMESH_CREDENTIAL={where}")
    try:
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port), reuse_address=True, ssl_context=ctx)
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {listen}: {e.strerror or e}") from None
    log.info("control plane listening on %s://%s (replica %s)", scheme, listen, app[api.REPLICA])
    say(f"operator API on {scheme}://{listen} (TLS; an operator credential is required)")
    if insecure_proxy_listen:
        ihost, _, iport = insecure_proxy_listen.rpartition(":")
        try:
            await web.TCPSite(runner, ihost.strip("[]"), int(iport), reuse_address=True).start()
        except OSError as e:
            await runner.cleanup()
            raise StartupError(f"cannot listen on {insecure_proxy_listen}: {e.strerror or e}") from None
        log.warning("INSECURE proxy listener on http://%s: any local process can read the snapshot of, and "
                    "report instances for, any host that never joined; join hosts with tokens instead",
                    insecure_proxy_listen)
        say(f"INSECURE plain-HTTP proxy listener on http://{insecure_proxy_listen} (loopback only; hosts without "
            "a join)", "warning")
    if identity is not None and proxy_listen:
        await _serve_proxy_listener(runner, identity, proxy_listen, proxy_listen_explicit, tls_dir)
        app[BEAT_NOW].set()  # announce the proxy listener's URL now, for `host add` on other replicas
    sd.ready(f"serving on {listen}")  # every listener accepts, the store is open
    try:
        await stop.wait()
        sd.stopping()
    finally:
        await runner.cleanup()
