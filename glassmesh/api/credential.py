"""An operator's credential: one PEM file with the operator certificate, its key and the mesh CA.

One file, like a kubeconfig, so that it is copied, pointed at and protected
as one thing: mode 0600 in a 0700 directory, refused when others can read
it. The CA in it is what the CLI checks the control plane against (its
server certificate names `spiffe://<td>/control`); the leaf and key are what
it presents. The CLI looks for it the way kubectl looks for a kubeconfig:
`--credential FILE`, then GLASSMESH_CREDENTIAL, then
`$XDG_CONFIG_HOME/glassmesh/operator.pem` (~/.config/glassmesh/operator.pem).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509

from glassmesh.api.certs import role_of_cert, spiffe_id_of
from glassmesh.files import InsecureFile, check_private, private_dir, write_private
from glassmesh.tlsdefaults import harden

ENV = "GLASSMESH_CREDENTIAL"
_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.S)


class CredentialError(Exception):
    """The credential cannot be found or used; the message says what to do."""


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "glassmesh" / "operator.pem"


def find(flag: str | None) -> Path | None:
    """The credential to use: the flag, else the environment, else the default file if it exists."""
    if flag:
        return Path(flag)
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    p = default_path()
    return p if p.exists() else None


@dataclass(frozen=True)
class Credential:
    path: Path
    cert: x509.Certificate
    ca_pem: bytes
    spiffe_id: str
    role: str | None

    @property
    def name(self) -> str:
        return self.spiffe_id.rsplit("/", 1)[-1]

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]

    @property
    def not_after(self) -> datetime:
        return self.cert.not_valid_after_utc

    def client_context(self) -> ssl.SSLContext:
        """TLS 1.3, presenting the operator certificate, trusting only the mesh CA (the name is checked apart)."""
        ctx = harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        ctx.check_hostname = False  # the control plane's SPIFFE ID is checked instead (expect_control)
        ctx.load_verify_locations(cadata=self.ca_pem.decode())
        ctx.load_cert_chain(str(self.path))
        return ctx

    def expect_control(self, peercert: dict | None) -> None:
        """Refuse a server that is not this mesh's control plane, even one with a certificate from its CA."""
        want = f"spiffe://{self.trust_domain}/control"
        got = [v for k, v in (peercert or {}).get("subjectAltName", ()) if k == "URI"]
        if want not in got:
            raise CredentialError(f"the server is not the control plane of {self.trust_domain} (it is "
                                  f"{', '.join(got) or 'unnamed'}, not {want})")


def load(path: str | Path) -> Credential:
    p = Path(path)
    try:
        check_private(p, "operator credential")
        data = p.read_bytes()
    except OSError as e:
        raise CredentialError(f"cannot read the operator credential {p}: {e.strerror or e}") from None
    except InsecureFile as e:
        raise CredentialError(str(e)) from None
    certs = [m.group(0) for m in _BLOCK.finditer(data) if m.group(1) == b"CERTIFICATE"]
    keys = [m for m in _BLOCK.finditer(data) if m.group(1).endswith(b"PRIVATE KEY")]
    if len(certs) < 2 or not keys:
        raise CredentialError(f"{p} is not an operator credential (it needs the operator certificate, its key "
                              f"and the mesh CA, as `glassmesh ca issue --operator` writes)")
    try:
        leaf = x509.load_pem_x509_certificate(certs[0])
    except ValueError as e:
        raise CredentialError(f"{p}: the first certificate cannot be read: {e}") from None
    spiffe = spiffe_id_of(leaf) or ""
    if "/operator/" not in spiffe:
        raise CredentialError(f"{p} holds {spiffe or 'a certificate with no SPIFFE ID'}, not an operator identity")
    return Credential(p, leaf, b"".join(certs[1:]), spiffe, role_of_cert(leaf))


def write(path: str | Path, cert_pem: bytes, key_pem: bytes, ca_pem: bytes, comment: str = "") -> Path:
    """The bundle, 0600 in a 0700 directory (created as such)."""
    p = Path(path)
    private_dir(p.parent)
    head = b"".join(b"# " + line.encode() + b"\n" for line in comment.splitlines())
    write_private(p, head + cert_pem + key_pem + ca_pem)
    return p


def call(url: str, cred: Credential, method: str, path: str, body: object = None,
         timeout: float = 30.0, peer: dict | None = None) -> tuple[int, bytes]:
    """One request to the operator API at `url` (https://host:port) as `cred`: (status, raw body).

    The server must prove it is this mesh's control plane (its CA, its SPIFFE
    ID) before the request body leaves; `peer`, when given, receives its
    certificate as ssl's getpeercert() gives it. OSError and ssl.SSLError when it
    cannot be reached, CredentialError when it is not the control plane.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise CredentialError(f"the operator API speaks TLS: give an https:// control-plane URL, not {url!r}")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                       context=cred.client_context())
    try:
        conn.connect()
        cert = conn.sock.getpeercert()  # type: ignore[union-attr]
        if peer is not None and cert:
            peer.update(cert)
        try:
            cred.expect_control(cert)
        except CredentialError as e:
            raise CredentialError(f"{url}: {e}") from None
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, parts.path.rstrip("/") + path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
