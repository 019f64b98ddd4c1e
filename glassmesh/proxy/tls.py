"""TLS contexts for the two sides of a proxy-to-proxy connection, and peer identity.

Identity is the SPIFFE URI SAN, checked by us after the handshake, not a DNS
name checked by OpenSSL: host and service names share one namespace, and a
host certificate must never pass for a service.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

ALPN_HTTP1 = "http/1.1"
ALPN_TCP = "glassmesh-tcp/1"
ALPN_MUX = "glassmesh-mux/1"
ALPNS = [ALPN_MUX, ALPN_HTTP1, ALPN_TCP]


class TlsConfigError(Exception):
    pass


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose read, write and pending are the C methods themselves.

    uvloop looks these up once per connection and calls them for every TLS
    record. ssl.SSLObject's versions are Python functions that only forward
    to the C object, so each record paid for a Python frame: three per
    request on each proxy, about 4% of the outbound's instructions per
    request (callgrind, 1 connection). Same arguments, same results.
    """

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        obj: DirectSSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        inner = obj._sslobj  # type: ignore[attr-defined]
        obj.read = inner.read  # type: ignore[method-assign]
        obj.write = inner.write  # type: ignore[method-assign]
        obj.pending = inner.pending  # type: ignore[method-assign]
        return obj


def _base(ctx: ssl.SSLContext, trust_bundle: str) -> ssl.SSLContext:
    ctx.sslobject_class = DirectSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_verify_locations(trust_bundle)
    except (OSError, ssl.SSLError) as e:
        raise TlsConfigError(f"cannot load trust bundle {trust_bundle}: {e}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(ALPNS)
    return ctx


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str) -> None:
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
        ctx.keylog_filename = keylog
    return ctx


def service_context(cert: str, key: str, trust_bundle: str, keylog: str | None = None) -> ssl.SSLContext:
    """The inbound context of one local service: its certificate, the trust bundle."""
    c = _base(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), trust_bundle)
    _load_pair(c, cert, key)
    if keylog:
        c.keylog_filename = keylog
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
        root.keylog_filename = keylog

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
