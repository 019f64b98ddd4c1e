"""A new key and its CSR, made in a child process: the serving proxy never loads cryptography (~11 MB).

A joined proxy needs a key only to join and then at each renewal (half of a
certificate's life, 12 hours by default), yet cryptography, once imported,
would stay in its memory for good. So `new_key` runs this module as
`python -m glassmesh.proxy.keygen`: it reads {"spiffe_id": ...} on stdin and
answers the key (PEM), the CSR (PEM) and the key's public half (DER, to check
the certificate that comes back: certfacts.py) on stdout, over a pipe only
the two processes hold. The key never touches the disk here; enroll.py writes
it (0600) once the certificate for it is checked.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

KEYGEN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class NewKey:
    key_pem: bytes
    csr_pem: str
    spki: bytes  # SubjectPublicKeyInfo, DER: a certificate for this key carries exactly these bytes


def generate_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: str | None) -> str:
    """A PEM CSR asking for `spiffe_id` (or for no name: a join without --host gets the token's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def make(spiffe_id: str | None) -> NewKey:
    """In this process (the child, or a test): an ECDSA P-256 key and a CSR asking for `spiffe_id`."""
    from cryptography.hazmat.primitives import serialization

    key = generate_key()
    return NewKey(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        make_csr(key, spiffe_id),
        key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
    )


async def new_key(spiffe_id: str | None) -> NewKey:
    """A key and CSR from a child process; RuntimeError (with its words) when it cannot make them."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "glassmesh.proxy.keygen", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        # Not asyncio.wait_for: on Python 3.11, a cancel (the proxy's SIGTERM) that arrives as the child
        # finishes is swallowed and the key returned, and the proxy then waited out its stop deadline in
        # the next retry's sleep (tests/e2e/test_stop.py saw it once). asyncio.timeout lets it through.
        async with asyncio.timeout(KEYGEN_TIMEOUT_S):
            out, err = await proc.communicate(json.dumps({"spiffe_id": spiffe_id}).encode())
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"making a key failed (status {proc.returncode}): "
                           f"{err.decode(errors='replace').strip()[-300:]}")
    doc = json.loads(out)
    return NewKey(doc["key_pem"].encode(), doc["csr_pem"], base64.b64decode(doc["spki"]))


def main() -> None:
    k = make(json.loads(sys.stdin.read())["spiffe_id"])
    sys.stdout.write(json.dumps({"key_pem": k.key_pem.decode(), "csr_pem": k.csr_pem,
                                 "spki": base64.b64encode(k.spki).decode()}))


if __name__ == "__main__":
    main()
