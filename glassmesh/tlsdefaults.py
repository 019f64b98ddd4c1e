"""The TLS settings every glassmesh endpoint shares: TLS 1.3 only, no session resumption.

Both ends of every TLS connection in the mesh are glassmesh (proxy to
proxy, proxy to control plane), so nothing needs TLS 1.2: with 1.3 only,
every cipher suite is an AEAD one (TLS 1.2's CBC suites, which scanners
flag for LUCKY13, are never offered) and the protocol-version alert refuses
an older client at once. Linkerd's proxy makes the same choice.

No session is ever resumed: a resumed handshake skips the certificate
chain, so a session cached before the trust bundle changed (a CA removed, a
root rotated) would let its holder in without being checked against the
new bundle. Servers send no TLS 1.3 tickets (`num_tickets = 0`, which also
saves two ticket encryptions and a write per new connection) and OpenSSL's
stateful ticket fallback is off (OP_NO_TICKET is not what we want in 1.3:
it turns on stateful resumption), so every connection is a full handshake.
"""

from __future__ import annotations

import ssl


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.3 only, no compression or renegotiation, and (on a server) no tickets to resume with."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
        ctx.num_tickets = 0
    return ctx
