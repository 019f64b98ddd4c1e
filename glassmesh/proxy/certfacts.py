"""What a proxy reads from its own certificates (validity, URI names, public key), without cryptography.

A proxy that joined checks its certificates every minute for renewal at
half-life, and checks each one the control plane returns. cryptography would
do it, but holds ~11 MB in every proxy for those few fields; keys and CSRs
are made in a child process (keygen.py), so a serving proxy never loads it.

Only what RFC 5280 DER allows is read: anything else is a ValueError, which
the callers treat as "no usable certificate" (renew it, or refuse it). This
is no verification: OpenSSL verifies chains at every handshake.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

BEGIN, END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
SAN_OID = bytes([0x06, 0x03, 0x55, 0x1D, 0x11])  # 2.5.29.17, subjectAltName, as a DER OID


@dataclass(frozen=True)
class CertFacts:
    """The first certificate of a PEM text. The datetimes have cryptography's names, so either fits renew_at."""

    der: bytes
    not_valid_before_utc: datetime
    not_valid_after_utc: datetime
    uris: tuple[str, ...]  # URI subject alternative names, in order
    spki: bytes  # SubjectPublicKeyInfo, DER: what a key's public half must equal

    @property
    def spiffe_id(self) -> str | None:
        """The first `spiffe://` URI SAN (as api.certs.spiffe_id_of), or None."""
        return next((u for u in self.uris if u.startswith("spiffe://")), None)

    def sha256(self) -> str:
        """SHA-256 of the DER form, lowercase hex (what `glassmesh host add` prints as --ca-sha256)."""
        return hashlib.sha256(self.der).hexdigest()


def first_der(pem: bytes) -> bytes:
    """The DER bytes of the first CERTIFICATE block of a PEM text."""
    start = pem.find(BEGIN)
    end = pem.find(END, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate")
    return base64.b64decode(b"".join(pem[start + len(BEGIN):end].split()), validate=True)


def _tlv(buf: bytes, i: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at i, which must end by `end`."""
    if i + 2 > end:
        raise ValueError("truncated DER")
    tag, n = buf[i], buf[i + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag number in a certificate")
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or i + k > end:
            raise ValueError("bad DER length")
        n = int.from_bytes(buf[i:i + k], "big")
        i += k
    if i + n > end:
        raise ValueError("truncated DER")
    return tag, i, i + n


def _children(buf: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(tag, content start, content end, element start) of each element in buf[start:end]."""
    out = []
    i = start
    while i < end:
        tag, s, e = _tlv(buf, i, end)
        out.append((tag, s, e, i))
        i = e
    return out


def _time(tag: int, raw: bytes) -> datetime:
    text = raw.decode("ascii")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z"):  # UTCTime YYMMDDHHMMSSZ
        yy = int(text[:2])
        text = ("19" if yy >= 50 else "20") + text
    elif not (tag == 0x18 and len(text) == 15 and text.endswith("Z")):  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("certificate time is not UTCTime or GeneralizedTime in Z form")
    if not text[:14].isdigit():
        raise ValueError("bad certificate time")
    f = [int(text[a:b]) for a, b in ((0, 4), (4, 6), (6, 8), (8, 10), (10, 12), (12, 14))]
    return datetime(f[0], f[1], f[2], f[3], f[4], f[5], tzinfo=UTC)  # ValueError when out of range


def read(pem: bytes | str) -> CertFacts:
    """The facts of the first certificate in `pem`; ValueError when it is not a well-formed X.509 certificate."""
    der = first_der(pem.encode() if isinstance(pem, str) else pem)
    tag, s, e = _tlv(der, 0, len(der))
    if tag != 0x30 or e != len(der):
        raise ValueError("not a certificate")
    top = _children(der, s, e)
    if len(top) != 3 or top[0][0] != 0x30:
        raise ValueError("not a certificate")
    tbs = _children(der, top[0][1], top[0][2])
    if tbs and tbs[0][0] == 0xA0:  # [0] version
        tbs = tbs[1:]
    if len(tbs) < 6 or [t[0] for t in tbs[:6]] != [0x02, 0x30, 0x30, 0x30, 0x30, 0x30]:
        raise ValueError("not a certificate")
    validity = _children(der, tbs[3][1], tbs[3][2])
    if len(validity) != 2:
        raise ValueError("bad validity")
    nb, na = (_time(t, der[a:b]) for t, a, b, _ in validity)
    spki = der[tbs[5][3]:tbs[5][2]]
    uris: list[str] = []
    for tag, a, b, _ in tbs[6:]:
        if tag != 0xA3:  # [3] extensions (issuer/subject unique IDs are skipped)
            continue
        (seq,) = _children(der, a, b)
        for _, xa, xb, _ in _children(der, seq[1], seq[2]):
            ext = _children(der, xa, xb)
            if der[ext[0][3]:ext[0][2]] != SAN_OID:
                continue
            value = ext[-1]
            if value[0] != 0x04:
                raise ValueError("bad subjectAltName")
            (names,) = _children(der, value[1], value[2])
            uris += [der[na_:nb_].decode("ascii") for t, na_, nb_, _ in _children(der, names[1], names[2])
                     if t == 0x86]  # [6] uniformResourceIdentifier
    return CertFacts(der, nb, na, tuple(uris), spki)


def load(path: str) -> CertFacts | None:
    """The facts of the certificate file at `path`, None when it is missing or not a certificate."""
    try:
        with open(path, "rb") as f:
            return read(f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
