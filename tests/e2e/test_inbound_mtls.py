"""The inbound port speaks mutual TLS only: callers without a valid mesh certificate never reach an app."""

from __future__ import annotations

import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from glassmesh.ca import init_ca
from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn, app_headers, client_context, split

REQUEST = b"GET /via-direct-tls HTTP/1.1\r\nHost: b\r\n\r\n"


def tls_try(ab: AB, ctx: ssl.SSLContext, sni: str = "b") -> str:
    """Connect to host2's inbound with `ctx`, send a request; describe what came back."""
    raw = socket.create_connection(split(ab.h2.inbound), timeout=5)
    try:
        try:
            s = ctx.wrap_socket(raw, server_hostname=sni)
        except (ssl.SSLError, OSError) as e:
            return f"handshake failed: {e!r}"
        try:
            s.sendall(REQUEST)
            data = b""
            while len(data) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if b"\r\n\r\n" in data:
                    break
        except (ssl.SSLError, OSError) as e:
            return f"refused after handshake: {e!r}"
        return f"response: {data[:300]!r}" if data else "closed without a response"
    finally:
        raw.close()


# The alert each refusal must carry: the peer is told why, not left to guess from an EOF or a timeout.
ALERTS = {
    "no_cert": "CERTIFICATE_REQUIRED",
    "other_ca": "UNKNOWN_CA",
    "expired": "CERTIFICATE_EXPIRED",
    "not_yet_valid": "BAD_CERTIFICATE",
}


def _refused(outcome: str, alert: str, elapsed: float) -> bool:
    """Refused means: the specific TLS alert arrived, within about a second (a timeout never counts)."""
    return alert in outcome.upper() and "TIMED OUT" not in outcome.upper() and elapsed < 1.5


def _mesh_still_works(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/after", {"Host": "b"})
    assert r.status == 200, f"the proxy should still serve after refusing a bad caller: {r!r}"


def test_valid_mesh_certificate_is_accepted(ab: AB) -> None:
    """The control case: a client with a mesh cert for `a` gets through, and b's own cert is presented."""
    cert, key = ab.mesh.cert_for("a")
    ctx = client_context(ab.mesh.ca_pem, cert, key)  # verifies the server cert for SNI "b"
    raw = socket.create_connection(split(ab.h2.inbound), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="b") as s:
        peer = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
        sans = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "spiffe://glassmesh.local/service/b" in sans.get_values_for_type(x509.UniformResourceIdentifier)
        assert s.version() == "TLSv1.3"
        assert s.selected_alpn_protocol() == "http/1.1"
        c = HttpConn(sock=s)
        r = c.request("GET", "/direct", {"Host": "b"})
    assert r.status == 200, r
    assert app_headers(r.json(), "glassmesh-source") == ["spiffe://glassmesh.local/service/a"]


@pytest.mark.parametrize("kind", ["no_cert", "other_ca", "expired", "not_yet_valid"])
def test_inbound_refuses_bad_client_certificates(ab: AB, tmp_path: Path, kind: str) -> None:
    before = ab.b.requests()
    cert: Path | None = None
    key: Path | None = None
    now = datetime.now(UTC)
    if kind == "other_ca":
        # Same trust domain and SPIFFE ID, but signed by a CA the mesh does not trust.
        cert, key = init_ca(tmp_path / "other", "glassmesh.local").issue("service", "a").write(tmp_path / "a")
    elif kind == "expired":
        leaf = ab.mesh.ca.issue("service", "a", not_before=now - timedelta(days=2), not_after=now - timedelta(days=1))
        cert, key = leaf.write(tmp_path / "a")
    elif kind == "not_yet_valid":
        leaf = ab.mesh.ca.issue("service", "a", not_before=now + timedelta(days=1), not_after=now + timedelta(days=2))
        cert, key = leaf.write(tmp_path / "a")
    ctx = client_context(ab.mesh.ca_pem, cert, key)
    t0 = time.monotonic()
    outcome = tls_try(ab, ctx)
    assert _refused(outcome, ALERTS[kind], time.monotonic() - t0), f"{kind}: {outcome}"
    time.sleep(0.2)
    assert ab.b.requests() == before, f"{kind}: a request reached the app ({outcome})"
    _mesh_still_works(ab)


def test_inbound_refuses_plaintext_http(ab: AB) -> None:
    """Plain HTTP at the inbound port gets a plain 400 saying what the port is, at once, and never the app.

    TLS has no alert for it (OpenSSL sends none), so the answer is HTTP. A
    client that reads it (Content-Length, Connection: close) is done at
    once; the port also closes by itself within the handshake timeout.
    """
    before = ab.b.requests()
    with socket.create_connection(split(ab.h2.inbound), timeout=10) as s:
        s.sendall(REQUEST)
        t0 = time.monotonic()
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        answered = time.monotonic() - t0
        try:
            rest = s.recv(65536)
        except OSError:
            rest = b""
        closed = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 400 "), f"plaintext got {data[:300]!r}"
    assert b"glassmesh-error: plaintext_on_mtls_port" in data and b"mutual TLS only" in data, data
    assert answered < 1.5, f"the inbound took {answered:.1f} s to answer plaintext"
    assert rest == b"" and closed < 5, f"the inbound kept the connection {closed:.1f} s ({rest!r})"
    time.sleep(0.2)
    assert ab.b.requests() == before, "plaintext reached the app"
    _mesh_still_works(ab)


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_inbound_refuses_tls_without_client_cert_even_with_no_server_check(ab: AB) -> None:
    """A careless client that checks nothing and sends no certificate still gets nothing."""
    before = ab.b.requests()
    t0 = time.monotonic()
    outcome = tls_try(ab, client_context(None))
    assert _refused(outcome, ALERTS["no_cert"], time.monotonic() - t0), outcome
    time.sleep(0.2)
    assert ab.b.requests() == before
