"""The proxy's identity: joining with a token, certificates by CSR, renewal at half-life.

Keys are made on the host (by a child process: keygen.py) and stored only in
DIR (mode 0600): the control plane only ever sees CSRs. Layout:

    DIR/identity/host.key, host.pem, ca.pem, identity.json   the host identity (from the join)
    DIR/certs/<service>.pem, .key, ca.pem                    what the snapshot points at

Joining (`--join TOKEN --ca-sha256 HEX`): the proxy fetches the CA from the
control plane's proxy listener without trusting it, checks it against the
SHA-256 that `glassmesh host add` printed (so a man in the middle cannot hand
it another CA), then sends its CSR over TLS verified against that CA. After
that every call is mutual TLS with the host certificate, and the server must
present the control plane's own name (`control.glassmesh.internal`, which no
host or service certificate can carry).

Every file is written atomically (temp file and rename), key before
certificate, and identity.json last: a crash mid-join leaves no half identity.
Like watch.py, this never imports glassmesh.control.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from glassmesh.api.certs import CLOCK_SKEW
from glassmesh.files import private_dir, write_atomic, write_private
from glassmesh.model.snapshot import Snapshot
from glassmesh.proxy import certfacts
from glassmesh.proxy.certfacts import CertFacts
from glassmesh.proxy.keygen import NewKey, new_key
from glassmesh.proxy.log import log
from glassmesh.tlsdefaults import harden

if TYPE_CHECKING:
    from cryptography import x509

# cryptography (~11 MB RSS, most of it its Rust library) is never imported by a serving proxy: keys
# and CSRs are made in a child process (keygen.py), certificates read by certfacts.py (test_proxy_footprint).

IDENTITY_DIR = "identity"
CONTROL_DNS_NAME = "control.glassmesh.internal"  # the name in the control plane's server certificate
CALL_TIMEOUT_S = 10.0
RENEW_CHECK_MAX_S = 60.0  # look at certificates at least this often
RETRY_MAX_S = 30.0


class EnrollError(Exception):
    """The proxy cannot get or use its identity (token refused, CA mismatch, unreachable at join)."""


class ControlUnavailable(EnrollError):
    """The replica could not answer now (unreachable, or a 5xx): another replica, or a later try, may."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status or 503  # what the watch treats it as: a replica that cannot serve now


# --------------------------------------------------------------------------- keys, CSRs, certificates


async def _new_key(spiffe_id: str | None) -> NewKey:
    try:
        return await new_key(spiffe_id)
    except (RuntimeError, OSError, ValueError, KeyError, TimeoutError) as e:
        raise EnrollError(f"cannot make a key and CSR: {e}") from None


def der_sha256(cert_pem: str | bytes) -> str:
    """SHA-256 of a PEM certificate's DER form, lowercase hex (what `host add` prints as --ca-sha256)."""
    return certfacts.read(cert_pem).sha256()


def renew_at(cert: CertFacts | x509.Certificate) -> float:
    """Unix time at half the certificate's life, counted from issue (the CA backdates by CLOCK_SKEW)."""
    nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    if na - nb > CLOCK_SKEW.total_seconds():
        nb += CLOCK_SKEW.total_seconds()
    return nb + (na - nb) / 2


def _under(path: str, base: str) -> bool:
    path, base = os.path.abspath(path), os.path.abspath(base)
    return os.path.commonpath([path, base]) == base


# --------------------------------------------------------------------------- the identity


@dataclass
class ProxyIdentity:
    """A joined host: its name, admitted services, and the mTLS context for the control plane."""

    data_dir: str
    host: str
    trust_domain: str
    services: list[str]
    _ctx: ssl.SSLContext | None = field(default=None, repr=False)
    _problems: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def dir(self) -> str:
        return os.path.join(self.data_dir, IDENTITY_DIR)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/host/{self.host}"

    @classmethod
    def load(cls, data_dir: str) -> ProxyIdentity | None:
        """The identity in DIR/identity, None when there is none; EnrollError when it is unusable."""
        meta = os.path.join(data_dir, IDENTITY_DIR, "identity.json")
        if not os.path.exists(meta):
            return None
        try:
            with open(meta, "rb") as f:
                doc = json.loads(f.read())
            ident = cls(data_dir, doc["host"], doc["trust_domain"], list(doc.get("services", [])))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise EnrollError(f"{meta} is unreadable ({e}); remove {os.path.dirname(meta)} and join again") from None
        for f in ("host.pem", "host.key", "ca.pem"):
            if not os.path.exists(ident.path(f)):
                raise EnrollError(f"{ident.path(f)} is missing; remove {ident.dir} and join again")
        return ident

    # --- TLS to the control plane ----------------------------------------------------
    def client_ssl(self) -> ssl.SSLContext:
        """Verify the control plane by the CA and its own name; present the host certificate."""
        if self._ctx is None:
            ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            ctx.load_verify_locations(self.path("ca.pem"))
            ctx.load_cert_chain(self.path("host.pem"), self.path("host.key"))
            self._ctx = ctx
        return self._ctx

    def request_kwargs(self) -> dict[str, Any]:
        """What every aiohttp call to the control plane adds: mTLS, and the name the server must prove."""
        return {"ssl": self.client_ssl(), "server_hostname": CONTROL_DNS_NAME}

    async def _post(self, session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> Any:
        timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
        async with session.post(url.rstrip("/") + path, json=body, timeout=timeout, **self.request_kwargs()) as r:
            if r.status >= 500:  # not a refusal: this replica (or its store) cannot sign now
                text = (await r.read())[:300].decode(errors="replace")
                raise ControlUnavailable(f"POST {path}: HTTP {r.status}: {text}", r.status)
            doc = await r.json(content_type=None)
            if r.status != 200:
                raise EnrollError(f"POST {path}: HTTP {r.status}: {(doc or {}).get('error', doc)}")
            return doc

    # --- certificates -------------------------------------------------------------------------
    def _ok(self, cert_path: str, spiffe_id: str, now: float) -> bool:
        cert = certfacts.load(cert_path)
        return cert is not None and cert.spiffe_id == spiffe_id and now < renew_at(cert)

    async def renew_host(self, session: aiohttp.ClientSession, url: str) -> None:
        """A new key and host certificate, asked for over mTLS with the current one."""
        key = await _new_key(self.spiffe_id)
        doc = await self._post(session, url, f"/v1/hosts/{self.host}/renew", {"csr_pem": key.csr_pem})
        _check_leaf(doc["cert_pem"], key, self.spiffe_id)
        write_private(self.path("host.key"), key.key_pem)
        write_atomic(self.path("host.pem"), doc["cert_pem"].encode())
        self._ctx = None  # the next connection presents the new certificate
        log(f"host certificate renewed, valid until {time.ctime(doc['not_after'])}")

    async def issue_service(self, session: aiohttp.ClientSession, url: str, service: str, cert_path: str,
                            key_path: str) -> None:
        want = f"spiffe://{self.trust_domain}/service/{service}"
        key = await _new_key(want)
        doc = await self._post(session, url, f"/v1/hosts/{self.host}/certs", {"service": service, "csr_pem": key.csr_pem})
        _check_leaf(doc["cert_pem"], key, want)
        private_dir(os.path.dirname(cert_path))
        write_private(key_path, key.key_pem)
        write_atomic(cert_path, doc["cert_pem"].encode())
        log(f"certificate for service {service} issued, valid until {time.ctime(doc['not_after'])}")

    async def ensure_service_certs(self, session: aiohttp.ClientSession, url: str, snap: Snapshot,
                                   now: float | None = None) -> bool:
        """Get a certificate for every local service of `snap` that has none, a wrong one, or one past half-life.

        Returns True when a certificate was written. A refusal (a service this
        host was not admitted for) is logged once; the snapshot that needs it
        is then rejected by the usual path, naming the missing certificate.
        ControlUnavailable (a 5xx) is raised, not logged: it is no refusal, and
        the caller retries, on another replica when there is one.
        """
        now = time.time() if now is None else now
        wrote = False
        for ls in snap.local_services:
            if self._ok(ls.cert, f"spiffe://{self.trust_domain}/service/{ls.name}", now):
                self._problems.pop(ls.name, None)
                continue
            if not (_under(ls.cert, self.data_dir) and _under(ls.key, self.data_dir)):
                self._problem(ls.name, f"not requesting a certificate for {ls.name}: the snapshot puts it "
                                       f"outside {self.data_dir} ({ls.cert})")
                continue
            try:
                await self.issue_service(session, url, ls.name, ls.cert, ls.key)
                self._problems.pop(ls.name, None)
                wrote = True
            except ControlUnavailable:
                raise
            except EnrollError as e:
                self._problem(ls.name, f"certificate for service {ls.name} refused: {e}")
        return wrote

    def _problem(self, key: str, message: str) -> None:
        if self._problems.get(key) != message:
            log(message)
        self._problems[key] = message

    def next_due(self, snap: Snapshot) -> float:
        """When the first certificate (host or service) reaches half-life."""
        dues = []
        for path in [self.path("host.pem"), *(ls.cert for ls in snap.local_services)]:
            cert = certfacts.load(path)
            dues.append(renew_at(cert) if cert is not None else 0.0)
        return min(dues)

    async def renew_due(self, session: aiohttp.ClientSession, url: str, snap: Snapshot) -> bool:
        """Renew whatever is at half-life; True when a service certificate changed (the proxy must reload)."""
        if not self._ok(self.path("host.pem"), self.spiffe_id, time.time()):
            await self.renew_host(session, url)
        return await self.ensure_service_certs(session, url, snap)

    async def run_renewals(self, session: Callable[[], aiohttp.ClientSession], url: str | Callable[[], str],
                           current: Callable[[], Snapshot], reload: Callable[[], None],
                           failed: Callable[[str, BaseException], object] | None = None) -> None:
        """Forever: renew at half-life, then reload so that new connections use the new certificates.

        Failures are retried with backoff; a proxy whose control plane is down
        keeps serving with the certificates it has until they expire (that
        window is the outage budget `glassmesh status` shows). `url` may be a
        callable (the replica in use now), and `failed(url, error)` is told of
        each failure so that the caller can move to another replica.
        """
        backoff = 1.0
        last_error = ""
        while True:
            at = url() if callable(url) else url
            try:
                if await self.renew_due(session(), at, current()):
                    reload()
                wait = min(RENEW_CHECK_MAX_S, max(1.0, self.next_due(current()) - time.time()))
                backoff, last_error = 1.0, ""
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, TimeoutError, EnrollError, ssl.SSLError) as e:
                if failed is not None and not (isinstance(e, EnrollError) and not isinstance(e, ControlUnavailable)):
                    failed(at, e)
                msg = f"{type(e).__name__}: {e}"
                if msg != last_error:
                    log(f"certificate renewal failed, retrying: {msg}")
                last_error, wait = msg, backoff
                backoff = min(RETRY_MAX_S, backoff * 2)
            await asyncio.sleep(wait)


def _check_leaf(cert_pem: str, key: NewKey, spiffe_id: str) -> None:
    """What came back is for our key and the identity we asked for (a control plane bug must not slip by)."""
    try:
        cert = certfacts.read(cert_pem)
    except ValueError as e:
        raise EnrollError(f"the control plane returned no readable certificate: {e}") from None
    if cert.spki != key.spki:
        raise EnrollError("the control plane returned a certificate for another key")
    if cert.spiffe_id != spiffe_id:
        raise EnrollError(f"the control plane returned a certificate for {cert.spiffe_id}, not {spiffe_id}")


# --------------------------------------------------------------------------- joining


async def join(url: str, token: str, ca_sha256: str, data_dir: str, host: str | None = None,
               trust_domain_hint: str | None = None) -> ProxyIdentity:
    """Enroll: pin the CA, send a CSR with the token, write DIR/identity. EnrollError says why not."""
    pin = ca_sha256.replace(":", "").strip().lower()
    base = url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(headers={"user-agent": "glassmesh-proxy/join"}) as s:
        try:
            # Not trusted yet: fetched without verification, then believed only if it matches the pin.
            async with s.get(base + "/v1/ca", ssl=False, timeout=timeout) as r:
                if r.status >= 500:
                    raise ControlUnavailable(f"cannot join through {url}: {base}/v1/ca: HTTP {r.status}", r.status)
                if r.status != 200:
                    raise EnrollError(f"{base}/v1/ca: HTTP {r.status} (is {url} the control plane's proxy listener?)")
                ca = await r.json(content_type=None)
            if der_sha256(ca["ca_pem"]) != pin:
                raise EnrollError(f"the control plane at {url} presents CA sha256 {der_sha256(ca['ca_pem'])}, not "
                                  f"{pin}: refusing to join (wrong --ca-sha256, or not the control plane you think)")
            ctx = harden(ssl.create_default_context(cadata=ca["ca_pem"]))
            td = ca["trust_domain"]
            key = await _new_key(f"spiffe://{td}/host/{host}" if host else None)
            async with s.post(base + "/v1/join", json={"token": token, "csr_pem": key.csr_pem}, ssl=ctx,
                              server_hostname=CONTROL_DNS_NAME, timeout=timeout) as r:
                if r.status >= 500:
                    raise ControlUnavailable(f"cannot join through {url}: HTTP {r.status}", r.status)
                doc = await r.json(content_type=None)
                if r.status != 200:
                    raise EnrollError(f"join refused by {url} (HTTP {r.status}): {(doc or {}).get('error', doc)}")
        except (aiohttp.ClientError, OSError, TimeoutError) as e:  # ssl.SSLError included
            raise ControlUnavailable(f"cannot join through {url}: {type(e).__name__}: {e}") from None
        except (ValueError, KeyError) as e:
            raise EnrollError(f"cannot join through {url}: {type(e).__name__}: {e}") from None
    name = doc["host"]
    if host and name != host:
        raise EnrollError(f"the join token is for host {name!r}, not {host!r} (--host)")
    ident = ProxyIdentity(os.path.abspath(data_dir), name, td, list(doc["services"]))
    _check_leaf(doc["cert_pem"], key, ident.spiffe_id)
    if der_sha256(doc["ca_pem"]) != pin:
        raise EnrollError("the join answer carries a different CA than the one pinned")
    os.makedirs(ident.dir, mode=0o700, exist_ok=True)
    private_dir(os.path.join(ident.data_dir, "certs"))
    write_private(ident.path("host.key"), key.key_pem)
    write_atomic(ident.path("host.pem"), doc["cert_pem"].encode())
    write_atomic(ident.path("ca.pem"), doc["ca_pem"].encode())
    write_atomic(os.path.join(ident.data_dir, "certs", "ca.pem"), doc["ca_pem"].encode())  # the snapshot's trust bundle
    write_atomic(ident.path("identity.json"), json.dumps(
        {"host": name, "trust_domain": td, "services": doc["services"], "ca_sha256": pin, "control": url,
         "joined": time.time()}, indent=1).encode() + b"\n")
    log(f"joined as host {name} ({ident.spiffe_id}); may serve: {', '.join(doc['services']) or 'nothing'}")
    return ident


async def obtain(url: str | Sequence[str], data_dir: str, host: str | None, token: str | None,
                 ca_sha256: str | None) -> ProxyIdentity:
    """The identity in DIR, or a new one from the join token; --host, when given, must match it.

    With several replicas the join goes through the first that answers: one
    that is down (or answers 5xx) is skipped, a refusal is final.
    """
    ident = ProxyIdentity.load(data_dir)
    if ident is not None:
        if host and host != ident.host:
            raise EnrollError(f"{ident.dir} holds the identity of host {ident.host!r}, not {host!r} (--host)")
        if token:
            log(f"{ident.dir} already holds the identity of host {ident.host}: --join not used")
        return ident
    if not token:
        raise EnrollError(f"{os.path.join(data_dir, IDENTITY_DIR)} holds no host identity: start the proxy once "
                          f"with --join TOKEN --ca-sha256 HEX (printed by `glassmesh host add`)")
    if not ca_sha256:
        raise EnrollError("--join needs --ca-sha256 HEX (printed by `glassmesh host add`) to check the "
                          "control plane's CA before trusting it")
    urls = [url] if isinstance(url, str) else list(url)
    for i, u in enumerate(urls):
        try:
            return await join(u, token, ca_sha256, data_dir, host)
        except ControlUnavailable as e:
            if i == len(urls) - 1:
                raise
            log(f"{e}; trying {urls[i + 1]}")
    raise EnrollError("no control-plane URL to join through")
