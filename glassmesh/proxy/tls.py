"""TLS contexts for the two sides of a proxy-to-proxy connection, and peer identity.

Identity is the SPIFFE URI SAN, checked by us after the handshake, not a DNS
name checked by OpenSSL: host and service names share one namespace, and a
host certificate must never pass for a service.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from typing import Any

from glassmesh.files import InsecureFile, check_private
from glassmesh.tlsdefaults import harden

ALPN_HTTP1 = "http/1.1"
ALPN_TCP = "glassmesh-tcp/1"
ALPN_MUX = "glassmesh-mux/1"
ALPNS = [ALPN_MUX, ALPN_HTTP1, ALPN_TCP]


class TlsConfigError(Exception):
    pass


# Plain HTTP sent to an mTLS port (curl http:// at the inbound port, a misconfigured client): OpenSSL
# recognises it and sends no alert, so the caller would see an empty reply. It gets this instead.
PLAINTEXT_BODY = (b'{"error": "plaintext_on_mtls_port", "status": 400, "message": "this is a glassmesh inbound '
                  b'port: it speaks mutual TLS only; call services through your host\'s outbound listener"}\n')
PLAINTEXT_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nglassmesh-error: plaintext_on_mtls_port; hop=inbound\r\n"
                    b"content-type: application/json\r\nconnection: close\r\ncontent-length: "
                    + str(len(PLAINTEXT_BODY)).encode() + b"\r\n\r\n" + PLAINTEXT_BODY)


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read, write and pending are the C methods themselves.

    uvloop looks these up once per connection and calls them for every TLS
    record. ssl.SSLObject's versions are Python functions that only forward
    to the C object, so each record paid for a Python frame: three per
    request on each proxy, about 4% of the outbound's instructions per
    request (callgrind, 1 connection). Same arguments, same results.

    Refusals are said, not just done: when a handshake fails (an old
    protocol, a certificate from another CA, an expired one), OpenSSL puts the
    alert that says why in the outgoing buffer, but uvloop (like asyncio)
    aborts the connection on the error without sending it, so the peer sees a
    bare EOF. do_handshake therefore reports the first failure as "want
    read": the event loop sends what is buffered (the alert) and waits; the
    next call, when the peer answers or closes, raises the real error. A peer
    that neither answers nor closes is cut off by the handshake timeout. Only
    on the server side: an outbound proxy's failed handshake keeps its error,
    which names the reason (`tls_failure`) in the caller's answer.
    """

    _failed: ssl.SSLError | None = None
    _outgoing: ssl.MemoryBIO | None = None

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        obj: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        obj._outgoing = args[1] if len(args) > 1 else kwargs.get("outgoing")
        inner = obj._sslobj  # type: ignore[attr-defined]
        obj.read = inner.read  # type: ignore[method-assign]
        obj.write = inner.write  # type: ignore[method-assign]
        obj.pending = inner.pending  # type: ignore[method-assign]
        return obj

    def do_handshake(self) -> None:
        if self._failed is not None:
            raise self._failed
        try:
            self._sslobj.do_handshake()  # type: ignore[attr-defined]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as e:
            if not self.server_side:  # a client's error names the server's fault (tls_failure): keep it
                raise
            self._failed = e
            if e.reason == "HTTP_REQUEST" and self._outgoing is not None:
                self._outgoing.write(PLAINTEXT_ANSWER)  # TLS has no alert for this: say it in HTTP
            raise ssl.SSLWantReadError("handshake failed; sending the alert first") from e


def _base(ctx: ssl.SSLContext, trust_bundle: str) -> ssl.SSLContext:
    ctx.sslobject_class = DirectSSLObject
    harden(ctx)  # TLS 1.3 only, never a resumed session (tlsdefaults.py says why)
    try:
        ctx.load_verify_locations(trust_bundle)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load trust bundle {trust_bundle}: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(ALPNS)
    return ctx


_announced: set[str] = set()


def set_keylog(ctx: ssl.SSLContext, path: str) -> None:
    """Write this context's TLS secrets to `path`, a file only its owner may read.

    OpenSSL opens the key log itself, with the process umask (0644 as a
    rule), and anyone who can read it can decrypt every captured connection.
    So the file is created 0600 first, an existing one with wider modes is
    narrowed, and the first use in a process says so on stderr: a key log
    left on by mistake must be noticed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    if path not in _announced:
        _announced.add(path)
        from glassmesh.proxy.log import warn

        warn(f"TLS key log on: the secrets of every TLS connection this proxy makes or takes are written to "
             f"{path} (mode 0600); whoever reads it can decrypt them")
    ctx.keylog_filename = path


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        check_private(key)
    except InsecureFile as e:
        raise TlsConfigError(str(e)) from None
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load certificate {cert} / key {key}: {e}") from None


def client_context(
    cert: str, key: str, trust_bundle: str, keylog: str | None = None, alpn: str = ALPN_HTTP1
) -> ssl.SSLContext:
    """What an outbound proxy presents when it calls on behalf of one local service.

    The ALPN protocol offered tells the inbound side what the connection carries.
    """
    ctx = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), trust_bundle)
    ctx.set_alpn_protocols([alpn])
    ctx.check_hostname = False  # the SPIFFE ID is checked instead, see peer_spiffe_id
    _load_pair(ctx, cert, key)
    if keylog:
        set_keylog(ctx, keylog)
    return ctx


def service_context(cert: str, key: str, trust_bundle: str, keylog: str | None = None) -> ssl.SSLContext:
    """The inbound context of one local service: its certificate, the trust bundle."""
    c = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), trust_bundle)
    _load_pair(c, cert, key)
    if keylog:
        set_keylog(c, keylog)
    return c


def listener_context(
    trust_bundle: str, lookup: Callable[[str], ssl.SSLContext | None], keylog: str | None = None
) -> ssl.SSLContext:
    """The inbound listener's context: on SNI it switches to the named service's context.

    `lookup` is consulted on every handshake, so a new snapshot's services and
    certificates take effect without rebinding the port. A handshake naming no
    local service is refused with unrecognized_name. The service name is left
    on the SSL object as `glassmesh_service` for the connection to read.
    """
    root = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), trust_bundle)
    if keylog:
        set_keylog(root, keylog)

    def on_sni(sslobj: Any, server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        c = lookup(server_name) if server_name else None
        if c is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = c
        sslobj.glassmesh_service = server_name
        return None

    root.sni_callback = on_sni
    return root


def peer_spiffe_id(sslobj: Any) -> str | None:
    """The SPIFFE ID in the verified peer certificate's URI SAN."""
    try:
        cert = sslobj.getpeercert()
    except (ValueError, AttributeError):
        return None
    if not cert:
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return None


def service_of_spiffe(spiffe_id: str | None, trust_domain: str) -> str | None:
    prefix = f"spiffe://{trust_domain}/service/"
    if spiffe_id and spiffe_id.startswith(prefix):
        name = spiffe_id[len(prefix):]
        return name if name and "/" not in name else None
    return None
