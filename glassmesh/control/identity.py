"""Joining hosts and issuing their certificates: join tokens, CSR checks, admission per service.

The control plane owns one CA, kept in its store (record "ca"/"root") so that
every replica on a shared store (etcd) signs with the same one: a proxy that
joined through one replica trusts, and is trusted by, all of them. The first
replica to start offers its DIR/ca (created on first start) with a
create-only write; every other replica, including one that lost a race to
start first, loads the store's and keeps a copy in its DIR/ca (see
`shared_ca`). Join tokens, admissions, removals and certificate expiries are
store records too, so any replica can serve any of them. A host joins
with a single-use, expiring token that `glassmesh host add` printed; the
proxy generates its key itself and sends only a CSR, so no private key ever
crosses the network or sits in the control plane's store. What a host may do
afterwards is decided here, in one place:

- a join token is stored as a record of kind "join" keyed by the token's
  SHA-256 (a leaked store dump does not leak usable tokens), with a TTL, and
  is consumed with `Store.delete_record`, which returns True exactly once;
- a CSR is signed only for the SPIFFE ID the caller is entitled to (its own
  host ID, or a service it was admitted for or that the config in force runs
  on it, see `may_serve`), and must ask for exactly that
  ID, so a mistake or a forgery on the proxy side is refused, not corrected;
- every issued certificate's expiry is recorded per host, and the host's
  earliest one goes into `HostRecord.cert_not_after`, which `status` turns
  into the outage budget.

Not done yet (a later issue): the root key is online, in the store and in
each replica's DIR/ca, so whoever can read the store (etcd: restrict it with
etcd auth and TLS) can sign for the mesh (an offline root with an online
intermediate comes later), and there is no revocation list (a removed host
keeps its certificates until they expire; it can no longer renew them or get
new ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from glassmesh.ca import CA, CAError, ca_from_pem, ca_key_pem, init_ca, load_ca, save_ca
from glassmesh.ca.signer import CLOCK_SKEW, key_is_encrypted, validate_name
from glassmesh.control.config import MeshConfig, from_doc
from glassmesh.control.layout import local_services
from glassmesh.control.store import HostRecord, Store, StoreError
from glassmesh.files import write_atomic, write_private
from glassmesh.model.snapshot import Address, split_address
from glassmesh.tlsdefaults import harden

log = logging.getLogger("glassmesh.control")
CA_KIND, CA_KEY = "ca", "root"  # the CA every replica signs with: {"trust_domain", "cert_pem", "key_pem", ...}
JOIN_KIND = "join"  # pending join tokens, keyed by sha256(token)
CERTS_KIND = "host-certs"  # host -> {"host": not_after, "service/a": not_after, ...}
REVOKED_KIND = "host-removed"  # hosts removed by `glassmesh host remove`: no more certificates
MIN_TOKEN_TTL_S = 1.0
MAX_TOKEN_TTL_S = 7 * 86400.0
DEFAULT_TOKEN_TTL_S = 3600.0
# The control plane's own server certificate carries this DNS name. It contains dots, so it is not a
# valid host or service name: no leaf the CA signs for the mesh can ever carry it, and a proxy that
# checks it knows it talks to the control plane, not to another host with a certificate from the same CA.
CONTROL_DNS_NAME = "control.glassmesh.internal"
CONTROL_CERT_DAYS = 365
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")


class IdentityError(Exception):
    """A join or certificate request that is refused; `status` is the HTTP status to answer with."""

    status = 400


class BadRequest(IdentityError):
    """The request is malformed (not a CSR, wrong key type, wrong SPIFFE ID asked for)."""

    status = 400


class Forbidden(IdentityError):
    """The caller is not entitled to it (unknown/used/expired token, service not admitted)."""

    status = 403


class UnknownHost(IdentityError):
    """No such host (nothing joined, no pending token under that name)."""

    status = 404


def token_key(token: str) -> str:
    """Where a token's record lives: its SHA-256, so the store never holds a usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters): fits on a command line unquoted."""
    return secrets.token_urlsafe(32)


def parse_duration(text: str) -> float:
    """'90s', '30m', '1h', '2d' or plain seconds -> seconds; ValueError says what is accepted."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 30m, 1h)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def ca_sha256(ca: CA) -> str:
    """SHA-256 of the root's DER, lowercase hex: what a joining proxy pins before trusting the CA."""
    return ca.cert.fingerprint(hashes.SHA256()).hex()


def _check_address(address: str) -> None:
    """A host's inbound address as mesh.yaml takes it (IP:PORT, [IPv6]:PORT), or ValueError.

    Checked when the token is made: the address goes into every snapshot that
    lists the host, and one that cannot be parsed would fail the compile of
    the whole mesh, not just this host.
    """
    try:
        msgspec.convert(address, Address)
        host, port = split_address(address)
        ipaddress.ip_address(host)
    except (msgspec.ValidationError, ValueError):
        raise ValueError(f"address {address!r} is not IP:PORT (e.g. 10.0.0.4:4143 or [fd00::4]:4143)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"address {address!r}: port {port} is not between 1 and 65535")


# Fingerprints of the CAs open_ca created in this process: `shared_ca` replaces one of those by the
# store's without a word (it has signed nothing yet), and keeps and warns about any other.
_FRESH: set[str] = set()


def open_ca(directory: str | Path, trust_domain: str) -> CA:
    """Load DIR/ca, or create it on first start; a CA for another trust domain is an error, not replaced."""
    d = Path(directory)
    if (d / "ca.pem").exists() or (d / "ca.key").exists():
        ca = load_ca(d)
        if ca.trust_domain != trust_domain:
            raise CAError(f"the CA in {d} is for trust domain {ca.trust_domain!r}, not {trust_domain!r} "
                          f"(--trust-domain must match the CA the mesh was built with)")
        return ca
    d.parent.mkdir(parents=True, exist_ok=True)
    d.mkdir(mode=0o700, exist_ok=True)
    ca = init_ca(d, trust_domain)
    _FRESH.add(ca_sha256(ca))
    return ca


def _ca_record(ca: CA, passphrase: bytes | None) -> dict[str, Any]:
    """The store's record of the CA: its key only when encrypted (without a passphrase, DIR/ca keeps it)."""
    rec = {"trust_domain": ca.trust_domain, "cert_pem": ca.cert_pem.decode(), "ca_sha256": ca_sha256(ca),
           "created": time.time(), "by": f"{socket.gethostname()} pid {os.getpid()}"}
    if passphrase is not None:
        rec["key_pem"] = ca_key_pem(ca, passphrase).decode()
    return rec


async def shared_ca(store: Store, local: CA, directory: str | Path | None = None,
                    passphrase: bytes | None = None) -> CA:
    """The CA all replicas on `store` sign with: the store's, or `local` if the store has none yet.

    With no CA in the store, `local` (this replica's DIR/ca) is offered with
    a create-only write: of several replicas starting at once exactly one
    wins, and the others read the winner's CA. That also carries an existing
    single replica's CA into the store unchanged, so hosts that joined it
    before stay trusted. When the store's CA differs from `local`, the
    store's is used and written to `directory` (DIR/ca) so that the copy on
    disk is the CA in use; a `local` CA this process did not just create may
    have signed certificates, so it is kept in DIR/ca/replaced-<sha256
    prefix>/ and the replacement is logged as a warning. A store CA for
    another trust domain is an error (CAError), as for DIR/ca.

    The key is in the store only encrypted: with a `passphrase` (PKCS8, the
    best encryption `cryptography` offers; a key an older version stored in
    the clear is encrypted in place), and not at all without one (a clear one
    is removed), so a copy of the store alone never mints anything. Replicas
    that share a key through the store need the passphrase (the CLI requires
    it with etcd); without one, each replica must hold the CA in its DIR/ca.
    """
    rec = await store.get_record(CA_KIND, CA_KEY)
    if rec is None:
        if await store.create_record(CA_KIND, CA_KEY, _ca_record(local, passphrase)):
            log.info("CA sha256 %s stored for every replica to share", ca_sha256(local))
            return local
        rec = await store.get_record(CA_KIND, CA_KEY)  # another replica's create won: use its CA
        if rec is None:
            raise CAError("the store refused to hold this CA but has none either; is another control plane "
                          "writing under the same store prefix?")
    if "key_pem" not in rec:
        # Stored without its key (no passphrase): this replica must hold the same CA in DIR/ca.
        if "cert_pem" not in rec or rec["cert_pem"].strip() != local.cert_pem.decode().strip():
            raise CAError(f"the store holds CA sha256 {rec.get('ca_sha256', '?')} without its key (stored only "
                          f"encrypted, with --ca-passphrase-file): copy that CA's DIR/ca here, or start every "
                          f"replica with the passphrase")
        if passphrase is not None:  # a passphrase given now: the replicas to come can share the key
            await store.put_record(CA_KIND, CA_KEY, {**rec, "key_pem": ca_key_pem(local, passphrase).decode()})
            log.info("the CA key is now in the store, encrypted with the passphrase given")
        return local
    try:
        key_pem = str(rec["key_pem"]).encode()
        shared = ca_from_pem(str(rec["cert_pem"]).encode(), key_pem, rec.get("trust_domain"),
                             cert_name="the store's CA certificate", key_name="the store's CA key",
                             td_name="the store's CA record", passphrase=passphrase)
    except KeyError as e:
        raise CAError(f"the store's CA record lacks {e}") from None
    if passphrase is not None and not key_is_encrypted(key_pem):
        await store.put_record(CA_KIND, CA_KEY, {**rec, "key_pem": ca_key_pem(shared, passphrase).decode()})
        log.warning("the CA key in the store was not encrypted: it is now, with the passphrase given")
    elif passphrase is None and not key_is_encrypted(key_pem):
        # An older version stored it in the clear: a copy of the store alone would mint any identity.
        await store.put_record(CA_KIND, CA_KEY, {k: v for k, v in rec.items() if k != "key_pem"})
        log.warning("removed the unencrypted CA key from the store (DIR/ca keeps it; give "
                    "--ca-passphrase-file to share it encrypted with other replicas)")
    if shared.trust_domain != local.trust_domain:
        raise CAError(f"the store's CA is for trust domain {shared.trust_domain!r}, not {local.trust_domain!r} "
                      f"(--trust-domain must match the CA the mesh was built with)")
    if ca_sha256(shared) == ca_sha256(local):
        return local
    if directory is not None:
        d = Path(directory)
        if ca_sha256(local) in _FRESH:
            log.info("using the CA the replicas share (sha256 %s), from the store; %s now holds a copy",
                     ca_sha256(shared), d)
        else:
            keep = d / f"replaced-{ca_sha256(local)[:12]}"
            save_ca(keep, local)
            log.warning("%s held CA sha256 %s, but the store holds CA sha256 %s, which every replica shares: "
                        "using the store's (the old one is kept in %s); hosts that joined with the old CA must "
                        "join again", d, ca_sha256(local), ca_sha256(shared), keep)
        save_ca(d, shared)
    return shared


# --------------------------------------------------------------------------- CSR checks


def check_csr(ca: CA, csr_pem: str | bytes, expected_id: str, *, may_omit: bool = False) -> ec.EllipticCurvePublicKey:
    """The CSR's public key, if the CSR is well-formed, self-signed and asks for exactly `expected_id`.

    Refusing (rather than ignoring) a CSR that asks for another identity
    catches a proxy that is misconfigured or lying before it gets anything.
    `may_omit`: a CSR naming no identity at all is fine too (a joining proxy
    started without --host learns its name from the token).
    """
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as e:
        raise BadRequest(f"csr_pem is not a PEM certificate request: {e}") from None
    if not csr.is_signature_valid:
        raise BadRequest("the CSR's signature does not verify (it was not signed by its own key)")
    key = csr.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise BadRequest("the CSR's key must be ECDSA P-256")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if uris != [expected_id] and not (may_omit and not uris):
        asked = ", ".join(uris) or "no SPIFFE ID"
        raise BadRequest(f"the CSR asks for {asked}; this request can only be signed for {expected_id}")
    return key


# --------------------------------------------------------------------------- the control plane's identity


@dataclasses.dataclass
class Identity:
    """The control plane's CA and the rules for what it signs."""

    ca: CA
    leaf_hours: float = 24.0
    proxy_url: str = ""  # https://<proxy listener>, once it listens

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.decode()

    @property
    def ca_sha256(self) -> str:
        return ca_sha256(self.ca)

    def host_id(self, host: str) -> str:
        return self.ca.spiffe_id("host", host)

    def host_of_peer(self, spiffe_id: str | None) -> str | None:
        """The host name a client certificate's SPIFFE ID names, or None when it is not a host identity."""
        prefix = f"spiffe://{self.trust_domain}/host/"
        if spiffe_id and spiffe_id.startswith(prefix):
            name = spiffe_id[len(prefix):]
            return name if name and "/" not in name else None
        return None

    # --- the proxy listener's TLS -------------------------------------------------
    def server_ssl(self, directory: str | Path) -> ssl.SSLContext:
        """A TLS server context for the proxy listener: a fresh server cert from the CA, client certs checked.

        Client certificates are optional at the handshake (a joining proxy has
        none yet) but must chain to the CA when given; every route except
        the join and the CA bundle then requires one (see `proxy_api.authorize`).
        """
        d = Path(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        na = min(now + timedelta(days=CONTROL_CERT_DAYS), self.ca.not_after)
        ski = self.ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CONTROL_DNS_NAME)]))
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName(CONTROL_DNS_NAME),
                x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}/control")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(self.ca.key, hashes.SHA256())
        )
        cert_path, key_path = d / "control-server.pem", d / "control-server.key"
        write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        ctx.load_cert_chain(cert_path, key_path)
        ctx.load_verify_locations(cadata=self.ca_pem)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    # --- operator: admitting hosts ------------------------------------------------------
    async def add_host(self, store: Store, name: str, services: list[str], ttl_s: float,
                       address: str = "") -> dict[str, Any]:
        """Create a join token for `name`, admitted for exactly `services`; only its hash is stored."""
        try:
            validate_name(name, "host name")
            for s in services:
                validate_name(s, "service name")
            if address:
                _check_address(address)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if not MIN_TOKEN_TTL_S <= ttl_s <= MAX_TOKEN_TTL_S:
            raise BadRequest(f"ttl must be between {MIN_TOKEN_TTL_S:.0f} s and {MAX_TOKEN_TTL_S / 86400:.0f} days")
        token = new_token()
        urls = await self.proxy_urls(store)
        now = time.time()
        await store.put_record(JOIN_KIND, token_key(token), {
            "host": name, "services": sorted(set(services)), "address": address,
            "created": now, "expires": now + ttl_s}, ttl_s=ttl_s)
        return {"host": name, "services": sorted(set(services)), "token": token, "expires": now + ttl_s,
                "ttl_s": ttl_s, "trust_domain": self.trust_domain, "ca_sha256": self.ca_sha256,
                "proxy_url": ",".join(urls), "proxy_urls": urls}

    async def proxy_urls(self, store: Store) -> list[str]:
        """The proxy listeners of the live replicas, this one first: what a joining proxy's --control takes.

        Read from the replicas' heartbeat records (kind "replica", see
        server._heartbeat); `proxy_url` in `add_host`'s answer is them joined
        with commas, so the command `host add` prints fails over between all
        of them from its first start.
        """
        urls = [self.proxy_url] if self.proxy_url else []
        try:
            replicas = sorted((await store.records("replica")).values(), key=lambda r: r.get("started", 0.0))
        except StoreError:
            replicas = []
        for r in replicas:
            url = r.get("proxy_url")
            if isinstance(url, str) and url and url not in urls:
                urls.append(url)
        return urls

    async def list_hosts(self, store: Store) -> dict[str, Any]:
        """Joined hosts (admitted services, and all it may serve with the config's; earliest cert expiry)
        and pending tokens (never the token)."""
        now = time.time()
        revoked = await store.records(REVOKED_KIND)
        cfg = await _config(store)
        joined = [{"name": h.name, "services": list(h.services), "may_serve": [*h.services, *sorted(may_serve(h, cfg) - set(h.services))],
                   "inbound": h.inbound,
                   "cert_not_after": h.cert_not_after or None, "removed": h.name in revoked}
                  for h in await store.hosts() if h.cert_not_after > 0 or h.name in revoked]
        pending = [{"host": v["host"], "services": v["services"], "expires_in_s": round(v["expires"] - now, 1),
                    "token_sha256": k[:12]}
                   for k, v in (await store.records(JOIN_KIND)).items()]
        return {"hosts": joined, "pending": sorted(pending, key=lambda p: (p["host"], p["expires_in_s"]))}

    async def remove_host(self, store: Store, name: str) -> dict[str, Any]:
        """Withdraw a host: its pending tokens go, it gets no more certificates, it leaves the mesh.

        Certificates already issued stay valid until they expire (no revocation list yet).
        """
        dropped = 0
        for key, v in (await store.records(JOIN_KIND)).items():
            if v.get("host") == name and await store.delete_record(JOIN_KIND, key):
                dropped += 1
        rec = await _host(store, name)
        if rec is None and not dropped:
            raise UnknownHost(f"no host {name!r} has joined or has a pending join token")
        await store.put_record(REVOKED_KIND, name, {"at": time.time()})
        if rec is not None:
            await store.put_host(dataclasses.replace(rec, services=(), inbound=""))
        return {"host": name, "removed": True, "tokens_dropped": dropped}

    # --- proxies: joining and certificates ---------------------------------------------------
    async def join(self, store: Store, token: str, csr_pem: str) -> dict[str, Any]:
        """Consume `token` (once) and sign the host certificate its CSR asks for."""
        key = token_key(token)
        rec = await store.get_record(JOIN_KIND, key)
        if rec is None:
            raise Forbidden("join token refused: it is unknown, was already used, or has expired "
                            "(ask for a new one with `glassmesh host add`)")
        host = rec["host"]
        # Checked before the token is consumed: a bad CSR (or --host naming another host) does not burn it.
        public_key = check_csr(self.ca, csr_pem, self.host_id(host), may_omit=True)
        if not await store.delete_record(JOIN_KIND, key):
            raise Forbidden("join token refused: it was used by another join at the same moment")
        leaf = self.ca.issue("host", host, self.leaf_hours, public_key=public_key)
        old = await _host(store, host)
        base = old or HostRecord(name=host, services=())
        await store.put_host(dataclasses.replace(
            base, services=tuple(rec["services"]), inbound=rec.get("address") or base.inbound,
            last_seen=time.time()))
        await store.delete_record(REVOKED_KIND, host)
        await store.put_record(CERTS_KIND, host, {})  # a new identity: older certificates no longer count
        await self._record_expiry(store, host, "host", leaf.not_after)
        return {"host": host, "services": list(rec["services"]), "trust_domain": self.trust_domain,
                "cert_pem": leaf.fullchain_pem.decode(), "ca_pem": self.ca_pem,
                "not_after": leaf.not_after.timestamp()}

    async def _admitted(self, store: Store, host: str) -> HostRecord:
        rec = await _host(store, host)
        if rec is None or await store.get_record(REVOKED_KIND, host) is not None:
            raise Forbidden(f"host {host!r} has not joined or was removed")
        return rec

    async def renew_host(self, store: Store, host: str, csr_pem: str) -> dict[str, Any]:
        """A new host certificate for a host that proves (by mTLS) it holds the current one."""
        await self._admitted(store, host)
        public_key = check_csr(self.ca, csr_pem, self.host_id(host))
        leaf = self.ca.issue("host", host, self.leaf_hours, public_key=public_key)
        await self._record_expiry(store, host, "host", leaf.not_after)
        return {"host": host, "cert_pem": leaf.fullchain_pem.decode(), "ca_pem": self.ca_pem,
                "not_after": leaf.not_after.timestamp()}

    async def issue_service(self, store: Store, host: str, service: str, csr_pem: str) -> dict[str, Any]:
        """A service certificate, only for a service `host` was admitted for when it joined."""
        rec = await self._admitted(store, host)
        allowed = may_serve(rec, await _config(store))
        if service not in allowed:
            raise Forbidden(f"host {host!r} may not serve {service!r}: it was admitted for "
                            f"{', '.join(rec.services) or 'no services'}, and the mesh config in force does not "
                            f"put {service!r} on it (hosts[].services)")
        try:
            expected = self.ca.spiffe_id("service", service)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        public_key = check_csr(self.ca, csr_pem, expected)
        leaf = self.ca.issue("service", service, self.leaf_hours, public_key=public_key)
        await self._record_expiry(store, host, f"service/{service}", leaf.not_after)
        return {"host": host, "service": service, "cert_pem": leaf.fullchain_pem.decode(), "ca_pem": self.ca_pem,
                "not_after": leaf.not_after.timestamp()}

    async def _record_expiry(self, store: Store, host: str, what: str, not_after: datetime) -> None:
        """Keep each certificate's expiry and put the host's earliest into its record (the outage budget)."""
        exp = dict(await store.get_record(CERTS_KIND, host) or {})
        exp[what] = not_after.timestamp()
        rec = await _host(store, host)
        if rec is not None:
            services = may_serve(rec, await _config(store))
            exp = {k: v for k, v in exp.items() if k == "host" or k.removeprefix("service/") in services}
        await store.put_record(CERTS_KIND, host, exp)
        if rec is not None:
            await store.put_host(dataclasses.replace(rec, cert_not_after=min(exp.values())))


def may_serve(rec: HostRecord, cfg: MeshConfig | None) -> set[str]:
    """The services a joined host may get certificates for and report instances of: those it was
    admitted for when it joined, and those the mesh config in force runs on it.

    The config counts because whoever may apply it already decides what runs
    where (the same operator API admits hosts), so a service added to a
    joined host by `glassmesh apply` gets its certificate at the host's next
    snapshot, without admitting the host again. The join-time list stays, so
    a host admitted before its services are in the config can start at once.
    """
    allowed = set(rec.services)
    host = cfg.host(rec.name) if cfg is not None else None
    if cfg is not None and host is not None:
        allowed.update(local_services(cfg, host))
    return allowed


async def _config(store: Store) -> MeshConfig | None:
    cur = await store.current()
    return from_doc(cur.doc) if cur is not None else None


async def _host(store: Store, name: str) -> HostRecord | None:
    return next((h for h in await store.hosts() if h.name == name), None)
