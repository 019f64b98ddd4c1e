"""Attacks on the inbound port's TLS itself: an old protocol, CBC suites, a resumed session, a key log.

Each one is performed against a real proxy with a real mesh certificate (the
attacker holds one: any mesh service may be compromised), and each must be
refused at the handshake, with the alert that says why, within a second.
"""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import time

import pytest

from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn, Mesh, split


def _client(ab: AB, **kw: object) -> ssl.SSLContext:
    cert, key = ab.mesh.cert_for("a")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for k, v in kw.items():
        setattr(ctx, k, v)
    ctx.load_verify_locations(str(ab.mesh.ca_pem))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def test_tls12_is_refused_with_a_protocol_version_alert(ab: AB) -> None:
    """A client capped at TLS 1.2 (where CBC suites live) gets the protocol_version alert, at once."""
    ctx = _client(ab, maximum_version=ssl.TLSVersion.TLSv1_2)
    t0 = time.monotonic()
    with socket.create_connection(split(ab.h2.inbound), timeout=5) as raw, pytest.raises(ssl.SSLError) as e:
        ctx.wrap_socket(raw, server_hostname="b")
    assert "PROTOCOL_VERSION" in str(e.value).upper() or "UNSUPPORTED_PROTOCOL" in str(e.value).upper(), e.value
    assert time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384",
                                    "ECDHE-ECDSA-AES128-GCM-SHA256"])
def test_openssl_cannot_negotiate_any_tls12_suite(ab: AB, cipher: str) -> None:
    """What a TLS scanner does: ask for each TLS 1.2 suite (the LUCKY13-prone CBC ones too); none is accepted."""
    cert, key = ab.mesh.cert_for("a")
    p = subprocess.run(["openssl", "s_client", "-connect", ab.h2.inbound, "-servername", "b", "-tls1_2",
                        "-cipher", cipher, "-cert", str(cert), "-key", str(key), "-CAfile", str(ab.mesh.ca_pem)],
                       input=b"", capture_output=True, timeout=10)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0, out
    assert "protocol version" in out or "unsupported protocol" in out, out
    assert f"Cipher is {cipher}" not in out


def test_tls13_suites_are_all_aead(ab: AB) -> None:
    """The control case: what is offered is TLS 1.3, and every suite it can pick is an AEAD one."""
    for suite in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"):
        cert, key = ab.mesh.cert_for("a")
        p = subprocess.run(["openssl", "s_client", "-connect", ab.h2.inbound, "-servername", "b",
                            "-ciphersuites", suite, "-cert", str(cert), "-key", str(key),
                            "-CAfile", str(ab.mesh.ca_pem)], input=b"", capture_output=True, timeout=10)
        out = (p.stdout + p.stderr).decode(errors="replace")
        assert f"Cipher is {suite}" in out and "TLSv1.3" in out, out


def test_a_session_is_never_resumed(ab: AB) -> None:
    """A client that keeps its session and offers it again gets a full handshake (its chain checked anew).

    A resumed session skips the certificate chain: after the trust bundle
    changed, it would let a caller in that the new bundle refuses.
    """
    ctx = _client(ab)
    sess = None
    for attempt in range(2):
        with socket.create_connection(split(ab.h2.inbound), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="b", session=sess) as s:
                assert not s.session_reused, f"attempt {attempt}: the inbound resumed a TLS session"
                r = HttpConn(sock=s).request("GET", "/resume", {"Host": "b"})
                assert r.status == 200
                sess = s.session  # TLS 1.3 tickets arrive after the handshake: read first, then take it
                assert sess is not None and not sess.has_ticket, "the inbound issued a session ticket"


def test_key_log_is_private_and_announced(mesh: Mesh) -> None:
    """--tls-keylog decrypts every connection: the file is 0600 (even one that existed 0644) and the log says so."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    fresh, existing = mesh.root / "host1.keys", mesh.root / "host2.keys"
    existing.write_text("")
    existing.chmod(0o644)
    h1.proxy_args = ["--tls-keylog", str(fresh)]
    h2.proxy_args = ["--tls-keylog", str(existing)]
    mesh.start()
    with HttpConn(h1.outbound("a")) as c:
        assert c.request("GET", "http://b/", {"Host": "b"}).status == 200
    for path in (fresh, existing):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
        assert path.read_text().strip(), f"{path} got no secrets"
    for p in mesh.proxies():
        assert "WARNING glassmesh proxy: TLS key log on" in p.log_text(), p.log_text()
