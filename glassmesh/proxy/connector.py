"""The connect step: a TCP connection, the TLS handshake, and the check of who answered.

Apart from the pools (pool.py), which only keep connections: a pool asks its
Connector for a new one, and a tcp link asks one directly. Nothing here runs
per request; a connect is one task per new connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from glassmesh.proxy.tls import peer_spiffe_id


class ConnectError(Exception):
    """No connection: `reason` is the glassmesh-error code (connect_refused, connect_timeout, tls_failure)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Connector:
    """How to reach one next hop: its address, and for a peer proxy the TLS context and the identity it must show.

    `ssl_ctx` and `timeout_s` change with a new snapshot (new certificates,
    a new connect timeout); the address and the expected peer never do.
    """

    def __init__(self, host: str, port: int, sni: str | None, ssl_ctx: ssl.SSLContext | None,
                 expected_peer: str | None, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.sni = sni
        self.ssl_ctx = ssl_ctx
        self.expected_peer = expected_peer
        self.timeout_s = timeout_s

    async def connect(self, factory: Callable[[], asyncio.Protocol]) -> tuple[Any, Any]:
        """(transport, protocol) of a new connection; raises ConnectError with a reason code.

        With TLS, the peer's certificate must name `expected_peer`: a handshake
        with anyone else is aborted before a byte of a request is written.
        """
        loop = asyncio.get_running_loop()
        ctx = self.ssl_ctx
        timeout = self.timeout_s
        where = f"{self.host}:{self.port}"
        try:
            async with asyncio.timeout(timeout):
                tr, proto = await loop.create_connection(
                    factory,
                    self.host,
                    self.port,
                    ssl=ctx,
                    server_hostname=self.sni if ctx else None,
                    ssl_handshake_timeout=timeout if ctx else None,
                )
        except TimeoutError:
            raise ConnectError("connect_timeout", f"no connection to {where} within {timeout:g}s") from None
        except ssl.SSLError as e:
            raise ConnectError("tls_failure", f"TLS handshake with {where} failed: {e.reason or e}") from None
        except ConnectionRefusedError:
            raise ConnectError("connect_refused", f"{where} refused the connection") from None
        except OSError as e:
            raise ConnectError("connect_refused", f"cannot connect to {where}: {e.strerror or e}") from None
        if ctx is not None:
            peer = peer_spiffe_id(tr.get_extra_info("ssl_object"))
            if peer != self.expected_peer:
                tr.abort()
                raise ConnectError("tls_failure", f"{where} presented {peer or 'no SPIFFE ID'}, "
                                   f"expected {self.expected_peer}")
        return tr, proto
