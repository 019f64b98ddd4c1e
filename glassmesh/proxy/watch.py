"""The proxy's side of the control plane: watch the host's snapshot, apply it, ack it, keep it on disk.

One asyncio task (in the process that owns the Runtime, or in the
supervisor with --workers N) long-polls `GET /v1/hosts/{host}/snapshot?after=V`.
A new snapshot is parsed and checked exactly as a snapshot file is, then
checked against the one in force (same host, and the proxy's own
blast-radius guard), swapped in through the same path SIGHUP uses (which
binds the listeners it adds and drains the ones it removes: listeners.py),
written to DIR/snapshot.json as last-known-good, and acknowledged with
accept or reject and the reason. A rejected one changes nothing.

A snapshot rejected for a reason on this host (a file it names cannot be
read, a certificate does not load, a port is taken) is kept and applied
again with backoff (RETRY_MIN_S growing to RETRY_MAX_S), first snapshot or
later: copying the missing file in is enough, no config change is needed.
The reject is acked once, the accept when it finally goes in; a newer
snapshot from the control plane replaces the one pending. Reasons that no
retry can change (another host's snapshot, invalid content) are not retried.

The data plane never depends on the control plane being up: every call has
a timeout, every failure is logged once and retried with backoff, and the
proxy serves on, for as long as it takes, from the snapshot it has (or from
disk after a restart), reporting how stale it is. It talks HTTP only and
never imports glassmesh.control.

With a host identity (DIR/identity, from a join: see enroll.py) every call is
mutual TLS with the host certificate, each snapshot's local services get
their certificates by CSR before it is applied, and a background task renews
them at half-life and reloads. Without one (an http:// control URL and
certificate files put in DIR/certs by hand) it is plain HTTP, as before.

Several replicas (`--control URL1,URL2`, over an etcd store): every call
(the watch, acks, reports, certificates) goes to the current replica; one
that fails in a way another replica may not (unreachable, timeout, 5xx)
moves the link to the next one in the list, and a long-poll still open on
the old one is dropped at once. Backoff grows only after every replica has
failed in a row, so a dead replica costs one retry, not an outage. With one
URL this is exactly the single-replica behaviour.

Deltas: the long-poll names the version the proxy holds and its content
digest (`base=V&hash=H`, the snapshot as it came over the wire, before paths
are resolved and before the proxy's own guard touches it). The control plane
answers with a delta against it when it can (api/wire.py); the proxy rebuilds
the new snapshot from its copy, checks that the result's digest is the one
the control plane sent, and from there treats it exactly as a full snapshot
(meaning checks, listeners, guard, certificates, swap, disk, ack). Any
mismatch is not a reject: the proxy forgets its base and asks again, which
gets the full snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import msgspec

from glassmesh import __version__
from glassmesh.api.wire import (
    BUILD_HEADER,
    FEATURES_HEADER,
    HASH_HEADER,
    HEAD_FIELDS,
    KIND_DELTA,
    KIND_FULL,
    KIND_HEADER,
    TIME_HEADER,
    VERSION_HEADER,
    WIRE,
    WIRE_HEADER,
    Ack,
    DeltaMismatch,
    Report,
    Reported,
    ack_path,
    apply_delta,
    decode_delta,
    instances_path,
    snapshot_path,
    wire_mismatch,
    wire_of,
)
from glassmesh.buildinfo import hot_path_doc
from glassmesh.files import private_dir
from glassmesh.model.snapshot import (
    FEATURES,
    DigestCache,
    Snapshot,
    SnapshotError,
    check_snapshot,
    confined_to,
    decode_snapshot,
    load_snapshot,
    resolve_paths,
    snapshot_digest,
    unknown_fields,
)
from glassmesh.proxy import lkg
from glassmesh.proxy.askloop import AskLoop
from glassmesh.proxy.enroll import ProxyIdentity
from glassmesh.proxy.health import HealthReporter
from glassmesh.proxy.listeners import StartupError
from glassmesh.proxy.log import error as log_error
from glassmesh.proxy.log import log
from glassmesh.proxy.routing import compile_table
from glassmesh.proxy.tls import TlsConfigError
from glassmesh.stopping import StopDeadline, cancel_and_wait, on_stop_signals

POLL_WAIT_S = 30.0  # how long the control plane may hold a long-poll open
CALL_TIMEOUT_S = 5.0  # connect timeout, and total timeout of acks and reports
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0  # a control plane coming back is seen within this
MAX_PENDING_ACKS = 16
RETRY_MIN_S = 1.0  # a snapshot rejected for a local reason is tried again after this...
RETRY_MAX_S = 30.0  # ... doubling up to this
STOP_TASKS_S = 5.0  # on stop, how long the watch, checks and renewals get to end once cancelled


class ControlError(Exception):
    """The control plane answered, but not with something usable (404 host unknown, 5xx, no version)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status when there was one: 5xx moves to another replica


class _Moved(Exception):
    """The link moved to another replica while a long-poll was open on the old one: poll the new one now."""


class _RetryDue(Exception):
    """The snapshot held for a retry is due while a long-poll is open: the poll is dropped, the retry runs."""


@dataclass
class Answer:
    """One 200 answer to the long-poll, as it came: a full snapshot or a delta (KIND_HEADER)."""

    body: bytes
    version: str | None  # VERSION_HEADER
    kind: str = KIND_FULL
    digest: str = ""  # HASH_HEADER: the control plane's digest of the version answered
    wire: int = WIRE  # WIRE_HEADER: the control plane's wire version (0: a release before versions)


@dataclass
class Decoded:
    """An answer made into a snapshot (or the reason it cannot be one), not yet applied."""

    version: int | None
    wire: Snapshot | None = None  # as the control plane compiled it: the next delta's base
    snap: Snapshot | None = None  # paths resolved: what is swapped in
    digest: str = ""  # of `wire`
    error: Exception | None = None
    kind: str = KIND_FULL
    how: str = ""  # for the log: "full snapshot, 475 KiB" or "delta from version 4: 1 service changed, 0 removed"


@dataclass
class Pending:
    """A snapshot rejected for a local reason, held to be applied again."""

    decoded: Decoded
    reason: str
    since: float  # unix time of the first reject
    due: float  # monotonic time of the next try
    attempts: int = 0
    backoff: float = RETRY_MIN_S

    def doc(self) -> dict[str, Any]:
        return {"version": self.decoded.version, "reason": self.reason, "since": self.since,
                "attempts": self.attempts, "next_retry_s": round(max(0.0, self.due - time.monotonic()), 3)}


def local_reason(e: BaseException) -> bool:
    """A reject a retry may cure: something on this host (a file, a key, a port), not the snapshot's content."""
    return isinstance(e, OSError | TlsConfigError | StartupError | ssl.SSLError)


def split_urls(spec: str | Sequence[str]) -> list[str]:
    """`URL1,URL2` (or a list) as distinct URLs, in order; ValueError unless all are http:// or all https://.

    One scheme for all: https:// means a host identity (mTLS) and http://
    certificate files by hand, and a proxy cannot be both.
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for p in (x.strip().rstrip("/") for x in parts):
        if p and p not in urls:
            urls.append(p)
    if not urls:
        raise ValueError("no control-plane URL given")
    bad = [u for u in urls if not u.startswith(("http://", "https://"))]
    if bad:
        raise ValueError(f"must be an http:// or https:// URL, got {bad[0]!r}")
    if len({u.split("://", 1)[0] for u in urls}) > 1:
        raise ValueError(f"give every control-plane URL with the same scheme (all http:// or all https://), "
                         f"got {', '.join(urls)}")
    return urls


def _retryable(e: BaseException) -> bool:
    """A failure another replica may not have: unreachable, timed out, or a 5xx answer."""
    if isinstance(e, ControlError):
        return e.status >= 500
    return isinstance(e, aiohttp.ClientError | OSError | TimeoutError)


class Target(Protocol):
    """What the watch applies snapshots to: a Worker (in process) or a supervisor (workers read the file)."""

    reads_file: bool  # True: apply_snapshot writes DIR/snapshot.json itself (a supervisor's workers read it)

    def current(self) -> Snapshot: ...

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Swap it in whole or raise (changing nothing)."""

    async def query(self, name: str, params: dict[str, str]) -> list[Any]:
        """Every serving process's answer to an ask's per-process route (proxy/asks.py)."""


# --------------------------------------------------------------------------- pure checks


def keep_emptied(old: Snapshot, new: Snapshot) -> tuple[Snapshot, list[str]]:
    """The proxy's own guard: a snapshot that empties a service that is not drained keeps its old endpoints.

    The control plane has the same guard; this one covers a control plane
    with a bug, a wiped store or a bad rollback. A service that disappears
    from the snapshot entirely was removed from the config on purpose and is
    not judged; one marked `drained` is emptied on purpose.
    """
    had = {s.name: s.endpoints for s in old.services if s.endpoints}
    warnings: list[str] = []
    services = []
    for s in new.services:
        if not s.endpoints and not s.drained and s.name in had:
            eps = had[s.name]
            s = msgspec.structs.replace(s, endpoints=eps)
            warnings.append(f"snapshot version {new.version} removes every endpoint of {s.name!r}, which is not "
                            f"drained: kept its {len(eps)} old endpoint{'s' * (len(eps) != 1)}")
        services.append(s)
    if not warnings:
        return new, []
    return msgspec.structs.replace(new, services=services), warnings


def _short(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    return msg if len(msg) < 500 else msg[:500] + "..."


# --------------------------------------------------------------------------- the link


class ControlLink:
    """The watch loop, the acks, the health reports and the staleness figures for one proxy."""

    def __init__(self, url: str | Sequence[str], host: str, data_dir: str,
                 identity: ProxyIdentity | None = None) -> None:
        self.urls = split_urls(url)  # the replicas, in order of preference
        self._current = 0
        self.failovers = 0  # how many times the link moved to another replica
        self._moved = asyncio.Event()  # set when it moves: the open long-poll on the old replica is dropped
        self._probe = False  # the next poll returns at once (wait=0): a new replica is known reachable or not
        self.host = host
        self.data_dir = data_dir
        self.identity = identity  # None: plain HTTP, certificates are files someone else put in DIR/certs
        self.connected = False
        self.last_error = ""
        self.last_contact: float | None = None  # unix time of the last answer from the control plane
        self.fresh_at = 0.0  # when the snapshot in force was last known to be current
        self.source = "none"  # where the snapshot in force came from: control | disk | config
        self.after = 0  # highest version seen, accepted or not: the next long-poll asks for later ones
        self.last_ack: dict[str, Any] | None = None
        self.last_reject: dict[str, Any] | None = None
        self.pending: Pending | None = None  # rejected for a local reason, to be tried again
        self.warnings: list[str] = []
        self.health: HealthReporter | None = None
        self._pending: list[Ack] = []
        self._target: Target | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._acking: asyncio.Task[None] | None = None  # the acks being sent beside the watch
        self._report_error = ""
        self._outage_logged = False
        self._contact_url = ""
        self._base: Snapshot | None = None  # the accepted snapshot as it came over the wire: deltas apply to it
        self._base_digest = ""
        self._digests = DigestCache()
        self.updates = {KIND_FULL: 0, KIND_DELTA: 0, "delta_fallbacks": 0}  # accepted snapshots by kind
        self.last_update = ""
        self._ignored_logged = False  # the fields a newer control plane sent that this proxy ignores: said once
        self.asks: list[AskLoop] = []

    @property
    def url(self) -> str:
        """The replica every call goes to now."""
        return self.urls[self._current]

    def _failed(self, url: str, e: BaseException) -> bool:
        """A call to `url` failed: move to the next replica if that one may do better; True if it moved.

        Only when `url` is still the current one: the watch, a report and a
        renewal in flight on a replica that died all fail, and the link must
        move on once, not once each (and not round to the dead one again).
        """
        if len(self.urls) == 1 or url != self.url or not _retryable(e):
            return False
        self._current = (self._current + 1) % len(self.urls)
        self.failovers += 1
        if not self._outage_logged:  # in an outage of every replica, the moves back and forth go unsaid
            why = _short(e) if isinstance(e, ControlError) else f"{type(e).__name__}: {_short(e)}"
            log(f"control plane {url} failed ({why}); moving to {self.url}", "warning")
        self._moved.set()
        self._probe = True
        return True

    # --- lifecycle -------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Every call says which wire version and build this proxy is (api/wire.py: the versions rule).
            self._session = aiohttp.ClientSession(headers={
                "user-agent": f"glassmesh-proxy/{self.host}", WIRE_HEADER: str(WIRE), BUILD_HEADER: __version__,
                FEATURES_HEADER: ",".join(sorted(FEATURES))})
        return self._session

    async def start(self, target: Target) -> None:
        """Watch and report for `target` until stop(); called once its listeners are up."""
        self._target = target
        self.after = max(self.after, target.current().version)
        self.health = HealthReporter(target.current, self._report)
        self._tasks = [asyncio.create_task(self._watch(), name="control-watch"),
                       asyncio.create_task(self.health.run(), name="health-checks")]
        # An ask may come through any replica an operator reaches: one asks long-poll on each (proxy/asks.py).
        query = getattr(target, "query", None)
        if query is not None:
            self.asks = [AskLoop(self.host, u, self._http, self._tls, query, log) for u in self.urls]
            self._tasks += [asyncio.create_task(a.run(), name=f"asks-{i}") for i, a in enumerate(self.asks)]
        if self.identity is not None:
            self._tasks.append(asyncio.create_task(
                self.identity.run_renewals(self._http, lambda: self.url, target.current, self._reload_certs,
                                           failed=self._failed),
                name="cert-renewal"))

    async def stop(self) -> None:
        if self._acking is not None:
            self._tasks.append(self._acking)
            self._acking = None
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks, timeout=STOP_TASKS_S, log=log)
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- staleness ---------------------------------------------------------------
    def age(self, now: float | None = None) -> float:
        """Seconds since the snapshot in force was known current; 0 while a watch is connected."""
        if self.connected:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.fresh_at)

    def ready_detail(self) -> dict[str, Any]:
        return {
            "snapshot_age_s": round(self.age(), 3),
            "snapshot_source": self.source,
            "control_plane": {
                "url": self.url,  # the replica in use (connected to, when connected)
                "replicas": self.urls,
                "failovers": self.failovers,
                "connected": self.connected,
                "last_error": self.last_error,
                "last_contact": self.last_contact,
                "last_ack": self.last_ack,
                "last_reject": self.last_reject,
                "warnings": self.warnings,
            },
            "pending_retry": self.pending.doc() if self.pending is not None else None,
            "snapshot_updates": {**self.updates, "last": self.last_update},
        }

    def metrics(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"snapshot_age_seconds": self.age(),
                               "control_plane_connected": 1.0 if self.connected else 0.0,
                               "snapshot_updates": dict(self.updates)}
        if self.identity is not None and self._target is not None:
            doc["cert_expiry"] = self.identity.expiries(self._target.current())
        return doc

    def _contact(self) -> None:
        now = time.time()
        if self._outage_logged:
            again = len(self.urls) == 1 or self.url == self._contact_url
            log(f"control plane {self.url} reachable" + (" again" if again else ""))
            self._outage_logged = False
        elif self.failovers and self._contact_url != self.url:
            log(f"connected to control plane {self.url}")
        self._contact_url = self.url
        self.connected, self.last_contact, self.fresh_at = True, now, now

    def _lost(self, e: BaseException, url: str | None = None, moved: bool = False) -> None:
        """A call failed for want of a control plane; `moved`: the link moved on to a replica not tried yet.

        An outage is logged once, when no replica is left to try; a move
        was logged by _failed, and the next replica may well answer.
        """
        self.last_error = f"{type(e).__name__}: {_short(e)}" if not isinstance(e, ControlError) else _short(e)
        if self.connected:
            # While the long-poll was open the control plane would have answered any change: the
            # snapshot was current until now (not just until the poll began, up to POLL_WAIT_S ago).
            self.fresh_at = time.time()
        if moved:
            self.connected = False
            return
        if self.connected or not self._outage_logged:
            cur = self._target.current().version if self._target else None
            serving = f"serving snapshot version {cur}" if cur is not None else "no snapshot yet"
            log(f"control plane {url or self.url} unreachable ({self.last_error}); {serving}, retrying", "warning")
            self._outage_logged = True
        self.connected = False

    # --- identity (mTLS) ------------------------------------------------------------
    def _tls(self) -> dict[str, Any]:
        """Extra arguments of every call: mutual TLS with the host identity, or nothing (plain HTTP)."""
        return self.identity.request_kwargs() if self.identity is not None else {}

    async def _prepare(self, snap: Snapshot) -> None:
        """Before a snapshot is applied: certificates for its local services, by CSR (joined hosts only).

        A replica that cannot sign now (unreachable, 5xx) is not a reason to
        reject the snapshot: the watch retries it, on the next replica if any.
        """
        if self.identity is None:
            return
        from glassmesh.proxy.enroll import ControlUnavailable

        url = self.url
        try:
            await self.identity.ensure_service_certs(self._http(), url, snap)
        except ControlUnavailable as e:
            err = ControlError(str(e), e.status)
            self._failed(url, err)
            raise err from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self._failed(url, e)
            raise

    def _reload_certs(self) -> None:
        """Renewed certificates on disk: swap the snapshot in force in again (the SIGHUP path) to load them."""
        if self._target is None:
            return
        try:
            self._target.apply_snapshot(self._target.current())
            log("reloaded renewed certificates: new connections use them")
        except Exception as e:  # noqa: BLE001 - the old contexts keep serving; renewal retries later
            log(f"renewed certificates could not be loaded, keeping the old ones: {_short(e)}")

    # --- HTTP calls ----------------------------------------------------------------
    async def _poll(self) -> tuple[int, Answer]:
        """One long-poll of the current replica; _Moved when the link moves elsewhere meanwhile."""
        url = self.url
        self._moved.clear()
        call = asyncio.ensure_future(self._poll_at(url))
        moved = asyncio.ensure_future(self._moved.wait())
        waits = [call, moved]
        if self.pending is not None:
            waits.append(asyncio.ensure_future(asyncio.sleep(max(0.0, self.pending.due - time.monotonic()))))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(*waits)  # a stop of this task while it waits here is not lost
        if not call.done() or call.cancelled():
            if len(waits) > 2 and waits[2].done() and not waits[2].cancelled():
                raise _RetryDue()
            raise _Moved(url)
        try:
            status, answer = call.result()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            self._failed(url, e)
            raise
        if status >= 500:
            self._failed(url, ControlError(f"snapshot watch: HTTP {status}", status))
        return status, answer

    def poll_params(self, wait: float) -> dict[str, str]:
        """The long-poll's query: later than `after`, and (to get a delta) the version held and its digest."""
        params = {"after": str(self.after), "wait": str(wait)}
        if self._base is not None:
            params.update(base=str(self._base.version), hash=self._base_digest)
        return params

    async def _poll_at(self, url: str) -> tuple[int, Answer]:
        timeout = aiohttp.ClientTimeout(total=POLL_WAIT_S + 10, sock_connect=CALL_TIMEOUT_S)
        wait, self._probe = (0.0 if self._probe else POLL_WAIT_S), False
        async with self._http().get(url + snapshot_path(self.host), params=self.poll_params(wait), timeout=timeout,
                                    headers={TIME_HEADER: f"{time.time():.3f}"}, **self._tls()) as r:
            h = r.headers
            return r.status, Answer(await r.read(), h.get(VERSION_HEADER), h.get(KIND_HEADER, KIND_FULL),
                                    h.get(HASH_HEADER, ""), wire_of(h.get(WIRE_HEADER)))

    async def _post(self, path: str, body: bytes) -> None:
        url = self.url
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        try:
            async with self._http().post(url + path, data=body, timeout=timeout,
                                         headers={"content-type": "application/json",
                                                  TIME_HEADER: f"{time.time():.3f}"}, **self._tls()) as r:
                text = await r.read()
                if r.status != 200:
                    raise ControlError(f"POST {path}: HTTP {r.status}: {text[:300].decode(errors='replace')}",
                                       r.status)
        except (aiohttp.ClientError, OSError, TimeoutError, ControlError) as e:
            self._failed(url, e)
            raise

    def _ack(self, version: int, accepted: bool, reason: str) -> None:
        self._pending.append(Ack(version=version, accepted=accepted, reason=reason, hot_path=hot_path_doc()["build"]))
        del self._pending[:-MAX_PENDING_ACKS]
        self.last_ack = {"version": version, "accepted": accepted, "reason": reason, "at": time.time()}

    def _send_acks(self) -> None:
        """Send pending acks beside the watch, so the next long-poll is not held up by them.

        The control plane writes acks in batches (tens of ms); the long-poll
        for the next version goes out at once instead of after that.
        """
        if self._pending and (self._acking is None or self._acking.done()):
            self._acking = asyncio.create_task(self._flush_acks(), name="control-acks")

    async def _flush_acks(self) -> None:
        """Send acks not yet delivered, oldest first; one that cannot go now goes with the next contact."""
        while self._pending:
            ack = self._pending[0]  # new acks may be queued while this one is on its way
            try:
                await self._post(ack_path(self.host), msgspec.json.encode(ack))
            except ControlError as e:
                if e.status >= 500:  # this replica cannot take it now (store down): it goes again later
                    return
                log(f"ack of version {ack.version} refused: {e}", "warning")  # it will never take it
            except (aiohttp.ClientError, OSError, TimeoutError):
                return
            with contextlib.suppress(ValueError):
                self._pending.remove(ack)

    async def _report(self, instances: list[Reported], ttl_s: float) -> None:
        body = msgspec.json.encode(Report(instances=instances, ttl_s=min(3600.0, max(1.0, ttl_s))))
        try:
            await self._post(instances_path(self.host), body)
            self._report_error = ""
        except (aiohttp.ClientError, OSError, TimeoutError):
            return  # the watch loop tracks and logs reachability
        except ControlError as e:
            if str(e) != self._report_error:
                log(f"health report refused: {e}", "warning")
            self._report_error = str(e)

    # --- snapshots ---------------------------------------------------------------------
    def set_base(self, wire: Snapshot | None, digest: str = "") -> None:
        """The snapshot (wire form) that the next delta may apply to; None: ask for full snapshots."""
        self._base = wire
        self._base_digest = (digest or snapshot_digest(wire, self._digests)) if wire is not None else ""

    def decode(self, answer: Answer) -> Decoded:
        """A full snapshot or a delta made into a checked snapshot; DeltaMismatch when a delta does not fit."""
        header = answer.version
        version = int(header) if header and header.isdigit() else None
        too_far = wire_mismatch(answer.wire, "control plane")
        if too_far:
            return Decoded(version, error=SnapshotError(too_far))
        if answer.kind == KIND_DELTA:
            if self._base is None:
                raise DeltaMismatch("a delta came, but this proxy holds no base snapshot")
            delta = decode_delta(answer.body)
            wire = apply_delta(self._base, self._base_digest, delta, self._digests)
            digest = delta.hash
            how = (f"delta from version {delta.base_version}: {len(delta.services)} service"
                   f"{'s' * (len(delta.services) != 1)} changed, {len(delta.removed)} removed"
                   + "".join(f", {f}" for f in HEAD_FIELDS if getattr(delta, f) is not msgspec.UNSET))
            try:
                check_snapshot(wire)
            except SnapshotError as e:
                return Decoded(wire.version, error=e)
        else:
            try:
                wire = decode_snapshot(answer.body)
            except SnapshotError as e:
                return Decoded(version, error=e)
            digest = snapshot_digest(wire, self._digests)
            if answer.digest and answer.digest != digest:
                # The control plane hashed something else: fields of a newer release that this proxy ignores
                # (rule 3 in api/wire.py). Deltas could not be verified: full snapshots only, meanwhile.
                self._ignoring(wire.version, answer.body, digest, answer.digest)
                digest = ""
            how = f"full snapshot, {len(answer.body) / 1024:.0f} KiB"
        if wire.host != self.host:
            return Decoded(wire.version, error=SnapshotError(
                f"snapshot is for host {wire.host!r}, this proxy is {self.host!r}"))
        try:
            confined_to(wire, self.data_dir)  # names no file outside DIR (not retried: the content is wrong)
        except SnapshotError as e:
            return Decoded(wire.version, error=e)
        return Decoded(wire.version, wire, resolve_paths(wire, self.data_dir), digest, kind=answer.kind, how=how)

    def _ignoring(self, version: int, body: bytes, digest: str, theirs: str) -> None:
        """Say once which fields of the control plane's snapshot this proxy does not know (and so ignores).

        Once per process, not per snapshot: during an upgrade every snapshot carries them.
        """
        if self._ignored_logged:
            return
        self._ignored_logged = True
        names = unknown_fields(body)
        log(f"snapshot version {version}: ignoring fields this proxy (glassmesh {__version__}, wire {WIRE}) does "
            f"not know: {', '.join(names[:20]) or 'none found (another encoder?)'}; its digest {digest[:12]} is not "
            f"the control plane's {theirs[:12]}, so full snapshots only (said once)")

    def _delta_failed(self, e: DeltaMismatch) -> None:
        """A delta that does not fit: forget the base, so the next poll (at once) gets the full snapshot."""
        log(f"snapshot delta not usable ({_short(e)}); asking for the full snapshot")
        self.updates["delta_fallbacks"] += 1
        self.set_base(None)

    def _reject(self, version: int | None, e: Exception, retry: bool = False) -> None:
        reason = _short(e) + (f" (retrying every {RETRY_MIN_S:.0f} s to {RETRY_MAX_S:.0f} s)" if retry else "")
        cur = self._target.current().version if self._target else None
        log(f"snapshot version {version} rejected, keeping " + (f"version {cur}" if cur is not None else
                                                                  "waiting") + f": {reason}")
        self.last_reject = {"version": version, "reason": reason, "at": time.time()}
        if version is None:
            raise ControlError(f"a snapshot with no readable version was rejected: {reason}")
        self._ack(version, False, reason)
        self.after = max(self.after, version)

    def handle(self, body: bytes, header: str | None, kind: str = KIND_FULL, digest: str = "") -> bool:
        """Check, apply, persist and ack one answer from the control plane; True when accepted.

        A delta that does not fit is neither accepted nor rejected: False,
        and the next poll asks for the full snapshot.
        """
        try:
            decoded = self.decode(Answer(body, header, kind, digest))
        except DeltaMismatch as e:
            self._delta_failed(e)
            return False
        return self.apply(decoded)

    def apply(self, decoded: Decoded, retry: bool = False) -> bool:
        """Apply a decoded answer (see handle); a snapshot that is not usable is rejected with the reason.

        One rejected for a local reason is held (`pending`) and tried again
        by `retry_pending`; `retry`: this is such a try (its reject was acked
        already). A new answer replaces whatever was pending.
        """
        target = self._target
        assert target is not None
        if not retry:
            self.pending = None
        if decoded.snap is None or decoded.wire is None:
            self._reject(decoded.version, decoded.error or SnapshotError("no snapshot"))
            return False
        got = decoded.snap
        old = target.current()
        try:
            snap, warnings = keep_emptied(old, got)
            target.apply_snapshot(snap)  # a supervisor also writes DIR/snapshot.json before its workers read it
            if not target.reads_file:
                try:
                    lkg.save(self.data_dir, snap)
                except OSError as e:
                    warnings.append(f"serving it, but cannot write {lkg.lkg_path(self.data_dir)}: {e.strerror or e}")
        except Exception as e:  # noqa: BLE001 - whatever makes it unusable is the reason in the ack
            self._failed_apply(decoded, e, retry)
            return False
        for w in warnings:
            log(f"guard: {w}")
        self.warnings = warnings
        self._accepted(decoded, got)
        log(f"snapshot version {got.version} came as a {decoded.how}")  # the swap itself logs "accepted"
        self._ack(got.version, True, ("accepted with a warning: " + "; ".join(warnings)) if warnings else "")
        return True

    def _accepted(self, decoded: Decoded, got: Snapshot) -> None:
        """Book-keeping of a snapshot taken (its ack is the caller's)."""
        p = self.pending
        if p is not None and p.decoded is decoded:
            log(f"snapshot version {got.version} applied on retry {p.attempts}, "
                f"{time.time() - p.since:.1f} s after it was rejected ({p.reason})")
        self.pending = None
        r = self.last_reject
        if r is not None and r.get("version") is not None and got.version >= r["version"] and not r.get("past"):
            # Still shown (the reason may matter), but as history: the proxy runs this version or a newer one.
            self.last_reject = {**r, "past": True, "running": got.version}
        self.after = max(self.after, got.version)
        self.source, self.fresh_at = "control", time.time()
        self.set_base(decoded.wire if decoded.digest else None, decoded.digest)
        self.updates[decoded.kind] = self.updates.get(decoded.kind, 0) + 1
        self.last_update = f"version {got.version}: {decoded.how}"

    def _failed_apply(self, decoded: Decoded, e: Exception, retry: bool) -> None:
        """Reject (acked once), and hold it for another try when the reason is local."""
        version = decoded.version
        p = self.pending
        if retry and p is not None and local_reason(e):
            p.reason = _short(e)
            p.backoff = min(RETRY_MAX_S, p.backoff * 2)
            p.due = time.monotonic() + p.backoff * random.uniform(0.9, 1.1)
            log(f"snapshot version {version} still cannot be applied (try {p.attempts}): {p.reason}; "
                f"next try in {p.backoff:.0f} s")
            return
        if retry:
            self.pending = None
        self._reject(version, e, retry=local_reason(e) and not retry)
        if local_reason(e) and not retry and version is not None:
            self.pending = Pending(decoded, _short(e), time.time(), time.monotonic() + RETRY_MIN_S)

    async def retry_pending(self) -> Snapshot | None:
        """Try the held snapshot again; the snapshot when it went in (None: still held, or dropped)."""
        p = self.pending
        if p is None or p.decoded.snap is None:
            return None
        p.attempts += 1
        try:
            await self._prepare(p.decoded.snap)
        except (ControlError, aiohttp.ClientError, OSError, TimeoutError) as e:
            p.due = time.monotonic() + p.backoff
            log(f"snapshot version {p.decoded.version}: certificates not ready ({_short(e)}); next try in "
                f"{p.backoff:.0f} s")
            return None
        if self._target is None:  # waiting for the first snapshot: it only has to load
            return self._take_first(p.decoded, retry=True)
        return p.decoded.snap if self.apply(p.decoded, retry=True) else None

    def _pause(self, backoff: float, misses: int) -> tuple[float, float]:
        """(how long to wait now, the next backoff): it grows only once every replica has failed in a row."""
        wait = backoff * random.uniform(0.8, 1.2)
        if misses % len(self.urls) == 0:
            backoff = min(BACKOFF_MAX_S, backoff * 2)
        return wait, backoff

    async def _watch(self) -> None:
        """Long-poll forever; nothing that goes wrong here may stop the proxy (log, back off, retry)."""
        backoff = BACKOFF_MIN_S
        misses = 0
        while True:
            url = self.url
            try:
                self._send_acks()
                status, answer = await self._poll()
                self._contact()
                if status == 200:
                    try:
                        decoded = self.decode(answer)
                    except DeltaMismatch as e:
                        self._delta_failed(e)
                        continue  # at once: the next poll carries no base, so it gets the full snapshot
                    if decoded.snap is not None:
                        await self._prepare(decoded.snap)
                    self.apply(decoded)
                    self._send_acks()
                elif status != 204:
                    raise ControlError(f"snapshot watch: HTTP {status}: "
                                       f"{answer.body[:300].decode(errors='replace')}", status)
                self.last_error = ""
                backoff, misses = BACKOFF_MIN_S, 0
                continue
            except asyncio.CancelledError:
                raise
            except _Moved:
                continue  # a call beside the watch (report, ack) failed on that replica: poll the next now
            except _RetryDue:
                await self.retry_pending()
                self._send_acks()
                continue
            except ControlError as e:  # it answers, but not usefully (host unknown, 5xx): not an outage
                if _short(e) != self.last_error:
                    log(f"control plane {url}: {e}")
                self.last_error = _short(e)
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                self._lost(e, url, moved=self.url != url and misses + 1 < len(self.urls))
            except Exception as e:  # noqa: BLE001 - a bug here must not end the watch
                log(f"snapshot watch failed: {type(e).__name__}: {e}", "error")
                self.last_error = f"{type(e).__name__}: {_short(e)}"
            misses += 1
            wait, backoff = self._pause(backoff, misses)
            await asyncio.sleep(wait)

    async def first_snapshot(self) -> Snapshot:
        """Wait (retrying with backoff, forever) for a first usable snapshot; it is saved, its ack queued."""
        log(f"no last-known-good snapshot in {self.data_dir}: waiting for the first snapshot from "
            f"{', '.join(self.urls)} before binding listeners")
        backoff = BACKOFF_MIN_S
        misses = 0
        try:
            while True:
                url = self.url
                try:
                    await self._flush_acks()
                    status, answer = await self._poll()
                    self._contact()
                    if status == 204:
                        continue
                    if status != 200:
                        raise ControlError(f"snapshot watch: HTTP {status}: "
                                           f"{answer.body[:300].decode(errors='replace')}", status)
                    try:
                        decoded = self.decode(answer)
                    except DeltaMismatch as e:  # not asked for (no base yet): ask again
                        self._delta_failed(e)
                        continue
                    if decoded.snap is not None:
                        await self._prepare(decoded.snap)
                    got = self._take_first(decoded)
                    if got is not None:
                        return got
                    continue
                except _RetryDue:
                    got = await self.retry_pending()
                    if got is not None:
                        return got
                    continue
                except _Moved:
                    continue
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    self._lost(e, url, moved=self.url != url and misses + 1 < len(self.urls))
                except ControlError as e:
                    if _short(e) != self.last_error:
                        log(f"control plane {url}: {e}")
                    self.last_error = _short(e)
                misses += 1
                wait, backoff = self._pause(backoff, misses)
                await asyncio.sleep(wait)
        finally:
            await self.close()  # workers fork after this: they must not inherit its connections

    def _take_first(self, decoded: Decoded, retry: bool = False) -> Snapshot | None:
        """The first snapshot, if its certificates load: saved, its ack queued (sent once listeners are up)."""
        if not retry:
            self.pending = None
        got = decoded.snap
        if got is None:
            self._reject(decoded.version, decoded.error or SnapshotError("no snapshot"))
            return None
        try:
            compile_table(got)
        except Exception as e:  # noqa: BLE001 - the reason goes in the ack
            self._failed_apply(decoded, e, retry)
            return None
        try:
            lkg.save(self.data_dir, got)
        except OSError as e:
            log(f"cannot write {lkg.lkg_path(self.data_dir)}: {e.strerror or e}", "error")
        self._accepted(decoded, got)
        self._ack(got.version, True, "")
        log(f"got snapshot version {got.version} from {self.url}")
        return got


# --------------------------------------------------------------------------- running a proxy


def _initial(link: ControlLink, data_dir: str, seed: str | None) -> Snapshot | None:
    """The last-known-good snapshot, else the --config seed, if usable (certificates load)."""
    candidates: list[tuple[str, Callable[[], Snapshot | None]]] = [("disk", lambda: lkg.load(data_dir))]
    if seed:
        candidates.append(("config", lambda: load_snapshot(seed)))
    for source, get in candidates:
        try:
            snap = get()
            if snap is None:
                continue
            if snap.host != link.host:
                raise SnapshotError(f"it is for host {snap.host!r}, this proxy is {link.host!r}")
            compile_table(snap)
        except Exception as e:  # noqa: BLE001 - unusable: say so and fall back to the control plane
            log(f"{'last-known-good snapshot' if source == 'disk' else 'snapshot ' + str(seed)} unusable: {e}")
            continue
        link.source = source
        link.after = snap.version
        if source == "disk":  # a candidate base for the first delta (its digest decides)
            link.set_base(lkg.as_sent(data_dir, snap))
        with contextlib.suppress(OSError):  # its age counts from when it was written
            link.fresh_at = os.path.getmtime(lkg.lkg_path(data_dir) if source == "disk" else str(seed))
        if source == "disk":
            log(f"serving last-known-good snapshot version {snap.version} from {lkg.lkg_path(data_dir)}; "
                f"watching {', '.join(link.urls)} for newer ones")
        return snap
    return None


async def _main(url: str, host: str | None, data_dir: str, seed: str | None, workers: int, keylog: str | None,
                access_log: str | None, join: str | None = None, ca_sha256: str | None = None,
                drain_s: float | None = None, otlp: str | None = None) -> None:
    from glassmesh.proxy import enroll
    from glassmesh.proxy.server import Options, serve

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    # Until serve() takes SIGTERM/SIGINT over: joining (a control plane may take its time to answer) and
    # waiting for the first snapshot. Without this, a SIGTERM while joining killed the proxy by the
    # signal's default action (tests/e2e/test_stop.py).
    stopped: list[str] = []

    def stop() -> None:
        stopped.append("stop")
        main.cancel()

    undo = on_stop_signals(loop, stop, StopDeadline("proxy", log_error))
    phase = "joining the control plane"
    try:
        identity = None
        urls = split_urls(url)
        if urls[0].startswith("https://"):  # the proxy listener: mutual TLS with the host identity (joining first)
            identity = await enroll.obtain(urls, data_dir, host, join, ca_sha256)
            host = identity.host
        assert host is not None
        phase = "waiting for the first snapshot"
        link = ControlLink(urls, host, data_dir, identity)
        snap = _initial(link, data_dir, seed)
        if snap is None:
            # A reload asked for before there is anything to reload (its default action would kill the proxy).
            loop.add_signal_handler(signal.SIGHUP, log, "SIGHUP: no snapshot yet to reload; still waiting for the first")
            try:
                snap = await link.first_snapshot()
            finally:
                loop.remove_signal_handler(signal.SIGHUP)
    except asyncio.CancelledError:
        if not stopped:
            raise
        log(f"stopped while {phase}")
        return
    finally:
        undo()
    try:
        opts = Options(workers, keylog, access_log, otlp=otlp) if drain_s is None else Options(
            workers, keylog, access_log, drain_s, otlp)
        await serve(lkg.lkg_path(data_dir), snap, opts, attach=link,
                    persist=lambda s: lkg.save(data_dir, s))
    finally:
        await link.close()


def run_controlled(url: str, host: str | None, data_dir: str, seed: str | None = None, workers: int = 1,
                   keylog: str | None = None, access_log: str | None = None, join: str | None = None,
                   ca_sha256: str | None = None, drain_s: float | None = None, otlp: str | None = None) -> None:
    """`glassmesh proxy --control URL[,URL...] [--host NAME] --data DIR [--join TOKEN --ca-sha256 HEX]`.

    Serve from disk or the control plane and watch it. An https:// URL is the
    control plane's proxy listener: the proxy joins first if DIR holds no
    identity (raising enroll.EnrollError when it cannot), then uses mTLS.
    Several URLs are replicas of one control plane, tried in that order.
    """
    from glassmesh.proxy.server import launch

    private_dir(data_dir)  # keys, certificates and snapshots: the proxy's user only
    launch(_main(url, host, os.path.abspath(data_dir), seed, workers, keylog, access_log, join, ca_sha256, drain_s,
                 otlp))
