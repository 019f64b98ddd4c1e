"""The CA: root on disk, SPIFFE leaves, and that real TLS stacks accept (and refuse) them."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import glassmesh.ca
from glassmesh.ca import CA, CAError, Leaf, init_ca, load_ca, spiffe_id_of
from glassmesh.cli.ca_cmd import ca as ca_group
from glassmesh.cli.main import cli


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _ext(cert: x509.Certificate, cls: type) -> x509.Extension:
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture
def authority(tmp_path: Path) -> CA:
    return init_ca(tmp_path / "ca")


def test_public_api() -> None:
    assert {"init_ca", "load_ca", "CA", "Leaf", "spiffe_id_of", "CAError"} <= set(glassmesh.ca.__all__)
    for name in glassmesh.ca.__all__:
        assert hasattr(glassmesh.ca, name)


# --------------------------------------------------------------------------- root


def test_init_writes_files_and_load_round_trips(tmp_path: Path) -> None:
    d = tmp_path / "ca"
    made = init_ca(d, trust_domain="example.org", days=30)
    assert (d / "ca.pem").read_bytes() == made.cert_pem
    assert _mode(d / "ca.key") == 0o600
    assert (d / "trust-domain").read_text().strip() == "example.org"
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]

    loaded = load_ca(d)
    assert loaded.trust_domain == "example.org"
    assert loaded.cert == made.cert
    assert loaded.fingerprint == made.fingerprint
    assert loaded.key.private_numbers() == made.key.private_numbers()

    root = loaded.cert
    root.verify_directly_issued_by(root)  # self-signed
    bc = _ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    _ext(root, x509.SubjectKeyIdentifier)
    assert spiffe_id_of(root) == "spiffe://example.org"
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(root.public_key().curve, ec.SECP256R1)
    assert timedelta(days=29) < root.not_valid_after_utc - datetime.now(UTC) <= timedelta(days=30)


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = init_ca(tmp_path)
    with pytest.raises(CAError, match="already exists"):
        init_ca(tmp_path)
    assert load_ca(tmp_path).fingerprint == first.fingerprint
    second = init_ca(tmp_path, force=True)
    assert second.fingerprint != first.fingerprint
    assert load_ca(tmp_path).fingerprint == second.fingerprint


@pytest.mark.parametrize("td", ["", "Upper.case", "has space", "spiffe://x", "-lead"])
def test_init_rejects_bad_trust_domain(tmp_path: Path, td: str) -> None:
    with pytest.raises(ValueError, match="trust domain"):
        init_ca(tmp_path, trust_domain=td)
    assert not (tmp_path / "ca.pem").exists()


def test_load_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="does not exist"):
        load_ca(tmp_path / "nope")
    with pytest.raises(CAError, match=r"ca\.pem is missing"):
        load_ca(tmp_path)
    init_ca(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CAError, match=r"ca\.key is missing"):
        load_ca(tmp_path)


def test_load_detects_mismatched_key_and_trust_domain(tmp_path: Path) -> None:
    init_ca(tmp_path / "one")
    init_ca(tmp_path / "two")
    (tmp_path / "one" / "ca.key").write_bytes((tmp_path / "two" / "ca.key").read_bytes())
    with pytest.raises(CAError, match="does not match"):
        load_ca(tmp_path / "one")

    (tmp_path / "two" / "trust-domain").write_text("other.domain\n")
    with pytest.raises(CAError, match="other.domain"):
        load_ca(tmp_path / "two")
    # Without the file, the root's own URI SAN names the trust domain.
    (tmp_path / "two" / "trust-domain").unlink()
    assert load_ca(tmp_path / "two").trust_domain == "glassmesh.local"


def test_load_rejects_garbage(tmp_path: Path) -> None:
    init_ca(tmp_path)
    (tmp_path / "ca.pem").write_text("not a cert")
    with pytest.raises(CAError, match="not a PEM certificate"):
        load_ca(tmp_path)


# --------------------------------------------------------------------------- leaves


def test_leaf_chains_to_root_with_identity_and_usages(authority: CA) -> None:
    before = datetime.now(UTC)
    leaf = authority.issue("service", "payments")
    cert = x509.load_pem_x509_certificate(leaf.cert_pem)
    assert cert == leaf.cert

    cert.verify_directly_issued_by(authority.cert)  # signature and issuer name
    assert leaf.spiffe_id == "spiffe://glassmesh.local/service/payments"
    assert spiffe_id_of(cert) == leaf.spiffe_id
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [leaf.spiffe_id]
    assert san.get_values_for_type(x509.DNSName) == ["payments"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "payments"

    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(authority.cert, x509.SubjectKeyIdentifier).value.digest

    # 24 h from now, backdated 5 minutes for clock skew.
    after = datetime.now(UTC)
    assert before + timedelta(hours=24) - timedelta(seconds=1) <= leaf.not_after <= after + timedelta(hours=24)
    assert before - timedelta(minutes=5, seconds=1) <= leaf.not_before <= after - timedelta(minutes=5)

    key = serialization.load_pem_private_key(leaf.key_pem or b"", password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert key.public_key() == cert.public_key()
    assert leaf.key_pem is not None and leaf.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8


def test_leaf_passes_cryptography_path_validation(authority: CA) -> None:
    """The full RFC 5280 check a TLS server does for a client certificate."""
    from cryptography.x509.verification import PolicyBuilder, Store

    leaf = authority.issue("host", "host1")
    assert leaf.spiffe_id == "spiffe://glassmesh.local/host/host1"
    verifier = PolicyBuilder().store(Store([authority.cert])).build_client_verifier()
    verified = verifier.verify(leaf.cert, [])
    assert x509.UniformResourceIdentifier(leaf.spiffe_id) in verified.subjects


def test_leaf_explicit_window_and_hours(authority: CA) -> None:
    nb = datetime(2030, 1, 1, tzinfo=UTC)
    leaf = authority.issue("service", "a", not_before=nb, not_after=nb + timedelta(hours=1))
    assert (leaf.not_before, leaf.not_after) == (nb, nb + timedelta(hours=1))
    short = authority.issue("service", "a", hours=0.5)
    assert timedelta(minutes=29) < short.not_after - datetime.now(UTC) <= timedelta(minutes=30)


def test_leaf_for_external_public_key(authority: CA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = authority.issue("host", "h2", public_key=key.public_key())
    assert leaf.key_pem is None
    assert leaf.cert.public_key() == key.public_key()
    with pytest.raises(CAError, match="no private key"):
        leaf.write("/tmp/never-written")
    with pytest.raises(ValueError, match="P-256"):
        authority.issue("host", "h2", public_key=ec.generate_private_key(ec.SECP384R1()).public_key())


@pytest.mark.parametrize("name", ["", "B", "a_b", "-a", "a-", "a.b", "x" * 64, "a b"])
def test_issue_rejects_bad_names(authority: CA, name: str) -> None:
    with pytest.raises(ValueError, match="lowercase DNS label"):
        authority.issue("service", name)


def test_issue_rejects_bad_kind_hours_and_window(authority: CA) -> None:
    with pytest.raises(ValueError, match="kind"):
        authority.issue("pod", "a")  # type: ignore[arg-type]
    for hours in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="hours"):
            authority.issue("service", "a", hours=hours)
    now = datetime.now(UTC)
    with pytest.raises(ValueError, match="not after"):
        authority.issue("service", "a", not_before=now, not_after=now)
    with pytest.raises(CAError, match="outlive the CA"):
        authority.issue("service", "a", hours=24 * 365 * 20)


def test_leaf_write(tmp_path: Path, authority: CA) -> None:
    leaf = authority.issue("service", "b")
    cert_path, key_path = leaf.write(tmp_path / "certs-b")
    assert (cert_path, key_path) == (tmp_path / "certs-b.pem", tmp_path / "certs-b.key")
    assert cert_path.read_bytes() == leaf.cert_pem  # root-signed: leaf only, the root is the anchor
    assert key_path.read_bytes() == leaf.key_pem
    assert _mode(key_path) == 0o600
    # Rewriting (renewal) replaces both and keeps the key private.
    again = authority.issue("service", "b")
    again.write(tmp_path / "certs-b")
    assert key_path.read_bytes() == again.key_pem and _mode(key_path) == 0o600
    with pytest.raises(CAError, match="does not exist"):
        leaf.write(tmp_path / "missing-dir" / "b")


def test_leaf_is_frozen(authority: CA) -> None:
    leaf = authority.issue("service", "b")
    assert isinstance(leaf, Leaf)
    with pytest.raises(AttributeError):
        leaf.spiffe_id = "spiffe://evil/service/x"  # type: ignore[misc]


# --------------------------------------------------------------------------- real TLS


def _files(tmp: Path, authority: CA, leaf: Leaf, tag: str) -> tuple[Path, Path, Path]:
    cert, key = leaf.write(tmp / tag)
    bundle = tmp / f"{tag}-bundle.pem"
    bundle.write_bytes(authority.cert_pem)
    return cert, key, bundle


def _mtls(tmp: Path, server: tuple[CA, Leaf], client: tuple[CA, Leaf], sni: str) -> dict[str, object]:
    """One TLS 1.3 handshake over 127.0.0.1 with CERT_REQUIRED on both sides.

    Each side trusts only its own CA. Returns what each side saw: the peer's
    SPIFFE ID, or the exception it raised.
    """
    s_cert, s_key, s_bundle = _files(tmp, *server, "server")
    c_cert, c_key, c_bundle = _files(tmp, *client, "client")

    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sctx.load_cert_chain(s_cert, s_key)
    sctx.load_verify_locations(s_bundle)
    sctx.verify_mode = ssl.CERT_REQUIRED

    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + hostname check by default
    cctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cctx.load_cert_chain(c_cert, c_key)
    cctx.load_verify_locations(c_bundle)
    assert cctx.verify_mode == ssl.CERT_REQUIRED and cctx.check_hostname

    def uri_of(peer: dict) -> str | None:
        return next((v for k, v in peer.get("subjectAltName", ()) if k == "URI"), None)

    seen: dict[str, object] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with sctx.wrap_socket(conn, server_side=True) as tls:
                seen["server"] = uri_of(tls.getpeercert())
                tls.sendall(b"ok")
                tls.recv(1)  # wait for the client to close
        except (OSError, ssl.SSLError) as e:
            seen["server"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with cctx.wrap_socket(raw, server_hostname=sni) as tls:
                peer = uri_of(tls.getpeercert())
                # In TLS 1.3 a rejected client cert shows up on the first read.
                data = tls.recv(2)
                seen["client"] = peer if data == b"ok" else ConnectionError(f"server closed: {data!r}")
    except (OSError, ssl.SSLError) as e:
        seen["client"] = e
    finally:
        t.join(10)
        listener.close()
    assert not t.is_alive()
    return seen


def test_tls_handshake_between_leaves_of_one_ca(tmp_path: Path, authority: CA) -> None:
    b = authority.issue("service", "b")
    a = authority.issue("service", "a")
    seen = _mtls(tmp_path, server=(authority, b), client=(authority, a), sni="b")
    assert seen == {"server": "spiffe://glassmesh.local/service/a", "client": "spiffe://glassmesh.local/service/b"}


def test_tls_rejects_client_from_another_ca(tmp_path: Path, authority: CA) -> None:
    other = init_ca(tmp_path / "other")
    b = authority.issue("service", "b")
    intruder = other.issue("service", "a")
    # The client trusts our root (so it accepts b), but presents a cert from another CA.
    seen = _mtls(tmp_path, server=(authority, b), client=(authority, intruder), sni="b")
    assert isinstance(seen["server"], ssl.SSLCertVerificationError)
    assert isinstance(seen["client"], OSError)  # SSLError is an OSError; so is a reset


def test_tls_rejects_server_from_another_ca(tmp_path: Path, authority: CA) -> None:
    other = init_ca(tmp_path / "other")
    seen = _mtls(tmp_path, server=(other, other.issue("service", "b")),
                 client=(authority, authority.issue("service", "a")), sni="b")
    assert isinstance(seen["client"], ssl.SSLCertVerificationError)


def test_tls_rejects_wrong_sni(tmp_path: Path, authority: CA) -> None:
    """SNI = service name is checked against the DNS SAN: b's cert cannot pose as c."""
    seen = _mtls(tmp_path, server=(authority, authority.issue("service", "b")),
                 client=(authority, authority.issue("service", "a")), sni="c")
    assert isinstance(seen["client"], ssl.SSLCertVerificationError)


# --------------------------------------------------------------------------- CLI


def test_cli_init_issue_show(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "ca"
    r = runner.invoke(ca_group, ["init", "--dir", str(d), "--trust-domain", "example.org", "--days", "10"])
    assert r.exit_code == 0, r.output
    authority = load_ca(d)
    assert authority.trust_domain == "example.org"
    assert authority.fingerprint in r.output and "example.org" in r.output and "ca.key" in r.output

    r = runner.invoke(ca_group, ["issue", "--dir", str(d), "--service", "b"])
    assert r.exit_code == 0, r.output
    assert "spiffe://example.org/service/b" in r.output
    assert str(d / "service-b.pem") in r.output
    leaf = x509.load_pem_x509_certificate((d / "service-b.pem").read_bytes())
    leaf.verify_directly_issued_by(authority.cert)
    assert _mode(d / "service-b.key") == 0o600

    out = tmp_path / "h1"
    r = runner.invoke(ca_group, ["issue", "--dir", str(d), "--host", "host1", "--out", str(out), "--hours", "2"])
    assert r.exit_code == 0, r.output
    cert = x509.load_pem_x509_certificate((tmp_path / "h1.pem").read_bytes())
    assert spiffe_id_of(cert) == "spiffe://example.org/host/host1"
    assert cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(hours=2)

    r = runner.invoke(ca_group, ["show", "--dir", str(d)])
    assert r.exit_code == 0 and authority.fingerprint in r.output


def test_cli_through_main_entry_point(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["ca", "init", "--dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ca.pem").exists()


def _assert_clean_error(r: Result, needle: str) -> None:
    assert r.exit_code == 2, r.output
    assert needle in r.stderr
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit)


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "ca")
    _assert_clean_error(runner.invoke(ca_group, ["issue", "--dir", d, "--service", "b"]), "no CA in")
    _assert_clean_error(runner.invoke(ca_group, ["show", "--dir", d]), "no CA in")
    assert runner.invoke(ca_group, ["init", "--dir", d]).exit_code == 0
    _assert_clean_error(runner.invoke(ca_group, ["issue", "--dir", d, "--service", "Bad_Name"]), "lowercase DNS label")
    _assert_clean_error(runner.invoke(ca_group, ["init", "--dir", d]), "already exists")
    _assert_clean_error(runner.invoke(ca_group, ["issue", "--dir", d]), "exactly one of")
    _assert_clean_error(runner.invoke(ca_group, ["issue", "--dir", d, "--service", "a", "--host", "h"]), "exactly one of")
    _assert_clean_error(runner.invoke(ca_group, ["issue", "--dir", d, "--service", "a", "--hours", "0"]), "--hours")
    _assert_clean_error(runner.invoke(ca_group, ["init", "--dir", str(tmp_path / "x"), "--trust-domain", "A B"]),
                        "trust domain")
    r = runner.invoke(ca_group, ["issue", "--dir", d, "--service", "Bad_Name"])
    assert len(r.stderr.strip().splitlines()) == 1


def test_cli_init_force(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(ca_group, ["init", "--dir", str(tmp_path)]).exit_code == 0
    before = load_ca(tmp_path).fingerprint
    assert runner.invoke(ca_group, ["init", "--dir", str(tmp_path), "--force"]).exit_code == 0
    assert load_ca(tmp_path).fingerprint != before
    assert os.path.exists(tmp_path / "trust-domain")


def test_cli_issue_out_makes_a_certs_dir_a_proxy_can_use(tmp_path: Path) -> None:
    """`--out DATA/certs/web` with no certs/ yet: the dirs (0700), the leaf, its key (0600) and ca.pem."""
    runner = CliRunner()
    ca_dir = tmp_path / "control" / "ca"
    assert runner.invoke(ca_group, ["init", "--dir", str(ca_dir)]).exit_code == 0
    certs = tmp_path / "host1" / "certs"
    for svc in ("web", "api"):
        r = runner.invoke(ca_group, ["issue", "--dir", str(ca_dir), "--service", svc, "--out", str(certs / svc)])
        assert r.exit_code == 0, r.output
        assert f"trust:       {certs / 'ca.pem'}" in r.output
    assert _mode(tmp_path / "host1") == 0o700 and _mode(certs) == 0o700
    assert _mode(certs / "web.key") == 0o600 and _mode(certs / "api.key") == 0o600
    authority = load_ca(ca_dir)
    assert (certs / "ca.pem").read_bytes() == authority.cert_pem
    # What a proxy does with them: its trust bundle verifies the leaf, the key matches it.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs / "web.pem"), str(certs / "web.key"))
    ctx.load_verify_locations(str(certs / "ca.pem"))
    x509.load_pem_x509_certificate((certs / "web.pem").read_bytes()).verify_directly_issued_by(authority.cert)
    # The default (--out omitted) writes into the CA's own dir and leaves its ca.pem alone.
    assert runner.invoke(ca_group, ["issue", "--dir", str(ca_dir), "--service", "x"]).exit_code == 0
    assert load_ca(ca_dir).fingerprint == authority.fingerprint


def test_cli_issue_refuses_to_mix_cas_in_one_certs_dir(tmp_path: Path) -> None:
    runner = CliRunner()
    for d in ("ca1", "ca2"):
        assert runner.invoke(ca_group, ["init", "--dir", str(tmp_path / d)]).exit_code == 0
    certs = tmp_path / "certs"
    assert runner.invoke(ca_group, ["issue", "--dir", str(tmp_path / "ca1"), "--service", "web",
                                    "--out", str(certs / "web")]).exit_code == 0
    before = {p.name: p.read_bytes() for p in certs.iterdir()}
    r = runner.invoke(ca_group, ["issue", "--dir", str(tmp_path / "ca2"), "--service", "api",
                                 "--out", str(certs / "api")])
    _assert_clean_error(r, "holds another CA")
    assert {p.name: p.read_bytes() for p in certs.iterdir()} == before  # nothing written, nothing lost
