"""Certificate files for a proxy given them by hand: the directories they live in, and the CA's root beside them.

A proxy under a control plane reads its trust bundle from DIR/certs/ca.pem,
next to its service certificates, so `glassmesh ca issue --out DIR/certs/web`
leaves a directory such a proxy can use: created private (0700, it holds
keys), with the root of the CA that signed the leaf.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from glassmesh.ca.signer import CA, CERT_FILE, CAError, fingerprint
from glassmesh.files import write_atomic


def make_private_dirs(directory: str | Path) -> None:
    """Create `directory` and any missing parents with mode 0700 (they will hold private keys).

    Directories that exist already keep their mode: they are the operator's.
    """
    d = Path(directory)
    missing = []
    while not d.is_dir():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=0o700)
        m.chmod(0o700)  # mkdir's mode is cut by the umask


def write_trust_bundle(directory: str | Path, ca: CA) -> Path:
    """Put `ca`'s root next to leaves it issued (DIR/ca.pem), where a proxy's `trust_bundle` looks for it.

    A ca.pem already there from another CA is refused, not replaced: the
    certificates beside it were issued by that CA and would stop verifying.
    """
    path = Path(directory) / CERT_FILE
    try:
        there = path.read_bytes()
    except FileNotFoundError:
        write_atomic(path, ca.cert_pem)
        return path
    except OSError as e:
        raise CAError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        other = fingerprint(x509.load_pem_x509_certificate(there))
    except ValueError:
        other = None
    if other != ca.fingerprint:
        what = f"another CA (SHA256 {other})" if other else "something that is not a PEM certificate"
        raise CAError(f"{path} holds {what}, not this one (SHA256 {ca.fingerprint}): the certificates in "
                      f"{path.parent} would not verify against one bundle. Issue them all from one CA (the "
                      f"control plane's is its DATA/ca), or remove {path} first")
    return path
