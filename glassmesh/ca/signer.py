"""The certificate authority's signer: a root on disk, leaves with SPIFFE identities.

Pure library code (no CLI, no network). The shapes are chosen so the identity
lifecycle can grow without breaking callers:

- A `CA` is "whatever signs leaves": today the self-signed root, later an
  intermediate. `CA.chain` holds the certificates a peer needs between a leaf
  and the trust anchor (empty when the root signs directly), and `Leaf.write`
  appends it, so intermediates need no change in the proxy.
- `CA.issue(..., public_key=...)` signs a key the CA never sees, which is what
  the control plane will do with CSRs from proxies.
- Keys and algorithms: ECDSA P-256 with SHA-256 everywhere, the common
  denominator of TLS 1.3 stacks and cheap to sign per renewal.

Identities are `spiffe://<trust-domain>/<kind>/<name>`; leaves carry the same
name as a DNS SAN so a TLS client that sets SNI to the service name can check
the server's certificate with ordinary hostname verification.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from glassmesh.api.certs import CLOCK_SKEW, OPERATOR_ROLES, ROLE_PREFIX, spiffe_id_of
from glassmesh.files import InsecureFile, check_private, private_dir, write_atomic, write_private

Kind = Literal["service", "host", "operator"]
KINDS: tuple[str, ...] = get_args(Kind)

# A lowercase DNS label, the same rule the snapshot uses for service and host names.
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# SPIFFE trust domains: lowercase letters, digits, '.', '-', '_'.
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$")

CERT_FILE = "ca.pem"
KEY_FILE = "ca.key"
TRUST_DOMAIN_FILE = "trust-domain"

# Leaves start this far in the past so a peer whose clock runs a little behind
# does not reject a certificate that was just issued.


class CAError(Exception):
    """The CA on disk cannot be created, read or used; the message says which file and why."""


# --------------------------------------------------------------------------- helpers


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as colon-separated upper-case hex (the `openssl x509 -fingerprint` form)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a lowercase DNS label, else raise ValueError saying why."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} {name!r}: must be a lowercase DNS label "
            "(a-z, 0-9 and '-', 1-63 characters, not starting or ending with '-')"
        )
    return name


def validate_trust_domain(td: str) -> str:
    """Return `td` if it is a valid SPIFFE trust domain, else raise ValueError."""
    if not isinstance(td, str) or not TRUST_DOMAIN_RE.match(td):
        raise ValueError(
            f"invalid trust domain {td!r}: use lowercase letters, digits, '.', '-' and '_' "
            "(for example 'glassmesh.local')"
        )
    return td


def _utc(dt: datetime) -> datetime:
    """Treat naive datetimes as UTC, as cryptography does, and return an aware one."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


# --------------------------------------------------------------------------- leaf


@dataclass(frozen=True)
class Leaf:
    """An issued end-entity certificate and (unless the caller holds it) its private key."""

    cert: x509.Certificate
    cert_pem: bytes
    # PKCS8 PEM, unencrypted; None when the CA signed a caller-supplied public key.
    key_pem: bytes | None
    spiffe_id: str
    not_before: datetime
    not_after: datetime
    # Certificates to send after the leaf (intermediates); empty when the root signed it.
    chain_pem: bytes = b""

    @property
    def fullchain_pem(self) -> bytes:
        """Leaf followed by any intermediates: what a TLS endpoint presents."""
        return self.cert_pem + self.chain_pem

    def write(self, prefix: str | Path) -> tuple[Path, Path]:
        """Write `<prefix>.pem` (leaf + intermediates) and `<prefix>.key` (mode 0600).

        Returns (cert_path, key_path). The key is written first so a reader that
        sees the new cert never pairs it with the old key for long.
        """
        if self.key_pem is None:
            raise CAError("this leaf was issued for an external public key; there is no private key to write")
        prefix = Path(prefix)
        cert_path = prefix.with_name(prefix.name + ".pem")
        key_path = prefix.with_name(prefix.name + ".key")
        if not cert_path.parent.is_dir():
            raise CAError(f"cannot write {cert_path}: directory {cert_path.parent} does not exist")
        write_private(key_path, self.key_pem)
        write_atomic(cert_path, self.fullchain_pem)
        return cert_path, key_path


# --------------------------------------------------------------------------- CA


@dataclass(frozen=True)
class CA:
    """A signing certificate and key for one trust domain."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    trust_domain: str
    # Certificates between this CA and the trust anchor, nearest first, to be sent
    # after each leaf. Empty for a root; an intermediate puts itself here.
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    def spiffe_id(self, kind: Kind, name: str) -> str:
        """The SPIFFE ID that `issue(kind, name)` would give."""
        if kind not in KINDS:
            raise ValueError(f"invalid kind {kind!r}: must be one of {', '.join(KINDS)}")
        validate_name(name, f"{kind} name")
        return f"spiffe://{self.trust_domain}/{kind}/{name}"

    def issue(
        self,
        kind: Kind,
        name: str,
        hours: float = 24,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        public_key: ec.EllipticCurvePublicKey | None = None,
        role: str | None = None,
    ) -> Leaf:
        """Sign a leaf for `spiffe://<td>/<kind>/<name>`, valid `hours` from now.

        An operator's leaf carries its role (`admin` or `read-only`) as its
        subject's organization, `glassmesh:<role>`, the way Kubernetes reads
        a client certificate's groups; it is a client certificate only, and
        no proxy takes it for a service (they accept only `/service/` IDs).

        `not_before`/`not_after` override the window (naive datetimes are UTC);
        `public_key` signs a key held elsewhere (the CSR path) and the leaf then
        has no `key_pem`. Raises ValueError for bad arguments and CAError when
        the leaf would outlive the CA.
        """
        spiffe_id = self.spiffe_id(kind, name)
        if (kind == "operator") != (role is not None):
            raise ValueError("an operator certificate needs a role, and only an operator certificate has one")
        if role is not None and role not in OPERATOR_ROLES:
            raise ValueError(f"invalid role {role!r}: must be one of {', '.join(OPERATOR_ROLES)}")
        if not (isinstance(hours, int | float) and math.isfinite(hours) and hours > 0):
            raise ValueError(f"invalid hours {hours!r}: must be a positive number")
        now = datetime.now(UTC)
        nb = _utc(not_before) if not_before is not None else now - CLOCK_SKEW
        na = _utc(not_after) if not_after is not None else now + timedelta(hours=hours)
        if na <= nb:
            raise ValueError(f"invalid validity: not_after {na.isoformat()} is not after not_before {nb.isoformat()}")
        if na > self.not_after:
            raise CAError(
                f"a leaf valid until {na.isoformat()} would outlive the CA, which expires "
                f"{self.not_after.isoformat()}; rotate the CA or ask for a shorter lifetime"
            )

        key: ec.EllipticCurvePrivateKey | None = None
        if public_key is None:
            key = ec.generate_private_key(ec.SECP256R1())
            public_key = key.public_key()
        elif not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1)):
            raise ValueError("invalid public_key: must be an ECDSA P-256 public key")

        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if role is not None:
            subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, ROLE_PREFIX + role))
        usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if kind == "operator"
                  else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        if kind != "operator":
            sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(
            cert=cert,
            cert_pem=_pem(cert),
            key_pem=_key_pem(key) if key is not None else None,
            spiffe_id=spiffe_id,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            chain_pem=b"".join(_pem(c) for c in self.chain),
        )


# --------------------------------------------------------------------------- root on disk


def _build_root(trust_domain: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
        x509.NameAttribute(NameOID.COMMON_NAME, f"glassmesh root CA ({trust_domain})"),
    ])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=days))
        # No path length limit: intermediates (per control-plane replica, for rotation) come later.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def init_ca(
    directory: str | Path, trust_domain: str = "glassmesh.local", days: int = 3650, force: bool = False
) -> CA:
    """Create a self-signed root in `directory`: ca.pem, ca.key (0600), trust-domain.

    Refuses to replace an existing CA unless `force`: replacing the root
    invalidates every certificate it issued, so it must be asked for.
    """
    validate_trust_domain(trust_domain)
    if not (isinstance(days, int) and days > 0):
        raise ValueError(f"invalid days {days!r}: must be a positive whole number")
    d = Path(directory)
    existing = [f for f in (CERT_FILE, KEY_FILE) if (d / f).exists()]
    if existing and not force:
        raise CAError(
            f"a CA already exists in {d} ({', '.join(existing)}); refusing to overwrite it "
            "(pass force=True / --force to replace it, which invalidates every certificate it issued)"
        )
    try:
        private_dir(d)
    except OSError as e:
        raise CAError(f"cannot create CA directory {d}: {e.strerror or e}") from e
    cert, key = _build_root(trust_domain, days)
    try:
        write_private(d / KEY_FILE, _key_pem(key))
        write_atomic(d / CERT_FILE, _pem(cert))
        write_atomic(d / TRUST_DOMAIN_FILE, (trust_domain + "\n").encode())
    except OSError as e:
        raise CAError(f"cannot write CA files in {d}: {e.strerror or e}") from e
    return CA(cert=cert, key=key, trust_domain=trust_domain)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CAError(f"no CA in {path.parent}: {what} {path.name} is missing (create one with `ca init`)") from None
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror or e}") from e


def load_ca(directory: str | Path) -> CA:
    """Load the CA written by `init_ca`, checking that its files belong together."""
    d = Path(directory)
    if not d.is_dir():
        raise CAError(f"no CA in {d}: directory does not exist (create one with `ca init`)")
    cert_bytes = _read(d / CERT_FILE, "certificate")
    try:
        check_private(d / KEY_FILE, "the CA's private key")
    except InsecureFile as e:
        raise CAError(str(e)) from None
    key_bytes = _read(d / KEY_FILE, "private key")
    td_path = d / TRUST_DOMAIN_FILE
    td = _read(td_path, "trust domain file").decode(errors="replace").strip() if td_path.exists() else None
    return ca_from_pem(cert_bytes, key_bytes, td, cert_name=str(d / CERT_FILE), key_name=str(d / KEY_FILE),
                       td_name=str(td_path))


def ca_from_pem(cert_pem: bytes, key_pem: bytes, trust_domain: str | None = None, *, cert_name: str = "the CA "
                "certificate", key_name: str = "the CA key", td_name: str = "the trust domain",
                passphrase: bytes | None = None) -> CA:
    """A CA from its PEM certificate and key, with the checks `load_ca` makes on files.

    Shared by `load_ca` and the control plane, which keeps its CA in the
    store when several replicas must sign with one: a CA read from anywhere
    gets the same checks (key matches certificate, CA:TRUE, a valid trust
    domain that agrees with the root's SPIFFE ID). The `*_name` arguments
    only say where each part came from in the error messages.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise CAError(f"{cert_name} is not a PEM certificate: {e}") from None
    encrypted = key_is_encrypted(key_pem)
    if encrypted and passphrase is None:
        raise CAError(f"{key_name} is encrypted: give its passphrase (--ca-passphrase-file FILE, or the "
                      f"GLASSMESH_CA_PASSPHRASE environment variable)")
    try:
        key = serialization.load_pem_private_key(key_pem, password=passphrase if encrypted else None)
    except (ValueError, TypeError) as e:
        if encrypted:
            raise CAError(f"{key_name} cannot be decrypted with the passphrase given (wrong passphrase?)") from None
        raise CAError(f"{key_name} is not a PEM private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{key_name} is not an ECDSA key")
    if not _same_public_key(key.public_key(), cert.public_key()):
        raise CAError(f"{key_name} does not match {cert_name}: the key and certificate are from different CAs")
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CAError(f"{cert_name} is not a CA certificate (basicConstraints CA:TRUE missing)")

    # The trust domain: as given, cross-checked with the root's URI SAN.
    san_td = None
    root_id = spiffe_id_of(cert)
    if root_id is not None:
        san_td = root_id.removeprefix("spiffe://").split("/", 1)[0]
    if trust_domain is not None:
        td = trust_domain
        if san_td is not None and td != san_td:
            raise CAError(f"{td_name} says {td!r} but {cert_name} is for trust domain {san_td!r}")
    elif san_td is not None:
        td = san_td
    else:
        raise CAError(f"no trust domain for the CA ({cert_name}): {td_name} is missing and the root names none")
    try:
        validate_trust_domain(td)
    except ValueError as e:
        raise CAError(f"{td_name}: {e}") from None
    return CA(cert=cert, key=key, trust_domain=td)


def save_ca(directory: str | Path, ca: CA) -> None:
    """Write `ca` into `directory` as `init_ca` does (ca.pem, ca.key 0600, trust-domain), replacing what is there.

    Only for a CA that already exists elsewhere (the control plane's copy of
    the CA its replicas share): making a new one is `init_ca`, which refuses
    to replace a CA by accident.
    """
    d = Path(directory)
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(d / KEY_FILE, _key_pem(ca.key))
        write_atomic(d / CERT_FILE, ca.cert_pem)
        write_atomic(d / TRUST_DOMAIN_FILE, (ca.trust_domain + "\n").encode())
    except OSError as e:
        raise CAError(f"cannot write CA files in {d}: {e.strerror or e}") from e


def ca_key_pem(ca: CA, passphrase: bytes | None = None) -> bytes:
    """The CA's private key as PKCS8 PEM, encrypted with `passphrase` when one is given.

    The encrypted form is what the control plane keeps in its store: a copy
    of the store (an etcd backup, a stolen SQLite file) then mints nothing
    without the passphrase, which lives elsewhere (a file or the environment).
    """
    if passphrase is None:
        return _key_pem(ca.key)
    return ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.BestAvailableEncryption(passphrase))


def key_is_encrypted(key_pem: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in key_pem
