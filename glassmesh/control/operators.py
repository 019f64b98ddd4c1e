"""The first operator's credential, written by the control plane itself so that a new mesh can be reached.

On start, when `DIR/admin.pem` is missing or past half its life, the control
plane issues an admin operator certificate from the mesh CA and writes it
there (0600, see api/credential.py). Whoever can read the control plane's
data dir already holds the CA key, so this grants nothing new; more
operators, with the read-only role too, come from `glassmesh ca issue
--operator NAME --role ROLE`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from glassmesh.api import credential
from glassmesh.control.identity import Identity

ADMIN_NAME = "admin"
OPERATOR_HOURS = 30 * 24.0  # operator credentials live 30 days; the bootstrap one is renewed at start


def issue(identity: Identity, name: str, role: str, path: str | Path, hours: float = OPERATOR_HOURS,
          control_url: str = "") -> Path:
    leaf = identity.ca.issue("operator", name, hours, role=role)
    assert leaf.key_pem is not None
    comment = (f"glassmesh operator credential: {leaf.spiffe_id} ({role}), valid until "
               f"{leaf.not_after:%Y-%m-%d %H:%M} UTC" + (f"\ncontrol plane: {control_url}" if control_url else ""))
    return credential.write(path, leaf.fullchain_pem, leaf.key_pem, identity.ca.cert_pem, comment)


def ensure_admin_credential(identity: Identity, path: str | Path, control_url: str) -> str:
    """Write DIR/admin.pem when it is missing, unreadable, from another CA or past half its life; its path if so."""
    p = Path(path)
    try:
        cred = credential.load(p)
        lifetime = cred.not_after - cred.cert.not_valid_before_utc
        if (cred.ca_pem.strip() == identity.ca.cert_pem.strip()
                and cred.not_after - datetime.now(UTC) > lifetime / 2):
            return ""
    except credential.CredentialError:
        pass
    issue(identity, ADMIN_NAME, "admin", p, control_url=control_url)
    return str(p)
