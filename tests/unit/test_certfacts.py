"""A joined proxy reads its certificates with certfacts.py and makes keys in a child (keygen.py).

Both stand in for cryptography in the serving proxy, so each is checked against cryptography itself
on real certificates from the mesh's CA, and on the DER forms the CA does not make (GeneralizedTime,
other SAN types, no SAN), and the enrollment checks on what a control plane returns still refuse a
certificate for another key or another identity.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from glassmesh.ca import init_ca, spiffe_id_of
from glassmesh.proxy import certfacts, enroll
from glassmesh.proxy.keygen import new_key

TD = "glassmesh.local"
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def same_facts(pem: bytes) -> certfacts.CertFacts:
    c = x509.load_pem_x509_certificate(pem)
    f = certfacts.read(pem)
    assert f.not_valid_before_utc == c.not_valid_before_utc
    assert f.not_valid_after_utc == c.not_valid_after_utc
    assert f.spiffe_id == spiffe_id_of(c)
    assert f.spki == c.public_key().public_bytes(*SPKI)
    assert f.der == c.public_bytes(serialization.Encoding.DER)
    return f


def test_facts_of_the_mesh_certificates_match_cryptography(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", TD)
    for kind, name, hours in (("service", "a", 2), ("host", "h1", 24), ("service", "b", 24 * 365)):
        leaf = ca.issue(kind, name, hours=hours)  # type: ignore[arg-type]
        assert same_facts(leaf.cert_pem).spiffe_id == f"spiffe://{TD}/{kind}/{name}"
        assert enroll.renew_at(certfacts.read(leaf.cert_pem)) == enroll.renew_at(leaf.cert)
    ca_pem = (tmp_path / "ca" / "ca.pem").read_bytes()
    assert same_facts(ca_pem).spiffe_id == f"spiffe://{TD}"  # the CA names the trust domain
    # Two certificates in one file (a bundle): the first one counts, as with cryptography.
    assert certfacts.read(ca_pem + ca.issue("service", "c").cert_pem).der == certfacts.read(ca_pem).der


def self_signed(not_after: dt.datetime, san: list[x509.GeneralName] | None, critical: bool = False) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if san is not None:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=critical)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_other_der_forms_read_like_cryptography() -> None:
    later = dt.datetime(2061, 7, 8, 9, 10, 11, tzinfo=dt.UTC)  # GeneralizedTime from 2050 on
    f = same_facts(self_signed(later, [x509.DNSName("x.example"), x509.UniformResourceIdentifier("https://a/"),
                                       x509.UniformResourceIdentifier("spiffe://td/service/z")], critical=True))
    assert f.not_valid_after_utc == later and f.uris == ("https://a/", "spiffe://td/service/z")
    assert same_facts(self_signed(dt.datetime(2030, 1, 1, tzinfo=dt.UTC), None)).uris == ()


@pytest.mark.parametrize("text", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n"])
def test_what_is_no_certificate_is_a_value_error(text: bytes, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        certfacts.read(text)
    (tmp_path / "c.pem").write_bytes(text)
    assert certfacts.load(str(tmp_path / "c.pem")) is None
    assert certfacts.load(str(tmp_path / "missing.pem")) is None


def test_truncated_der_is_a_value_error(tmp_path: Path) -> None:
    import base64

    der = certfacts.read(init_ca(tmp_path / "ca", TD).issue("service", "a").cert_pem).der
    for cut in (1, 10, len(der) // 2, len(der) - 1):
        pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der[:cut]) + b"-----END CERTIFICATE-----\n"
        with pytest.raises(ValueError):
            certfacts.read(pem)


def test_a_key_from_the_child_and_the_checks_on_what_comes_back(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", TD)
    want = f"spiffe://{TD}/service/a"
    key = asyncio.run(new_key(want))
    csr = x509.load_pem_x509_csr(key.csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [want]
    private = serialization.load_pem_private_key(key.key_pem, None)
    assert private.public_key().public_bytes(*SPKI) == key.spki == csr.public_key().public_bytes(*SPKI)

    good = ca.issue("service", "a", public_key=csr.public_key())  # type: ignore[arg-type]
    enroll._check_leaf(good.cert_pem.decode(), key, want)
    other_key = ca.issue("service", "a")
    with pytest.raises(enroll.EnrollError, match="another key"):
        enroll._check_leaf(other_key.cert_pem.decode(), key, want)
    other_name = ca.issue("service", "b", public_key=csr.public_key())  # type: ignore[arg-type]
    with pytest.raises(enroll.EnrollError, match="service/b, not"):
        enroll._check_leaf(other_name.cert_pem.decode(), key, want)
    with pytest.raises(enroll.EnrollError, match="no readable certificate"):
        enroll._check_leaf("garbage", key, want)
