"""A small asyncio client for etcd's v3 JSON gateway, with failover across members.

Why not a gRPC client: the project pins aiohttp already, and etcd serves
every call the store needs (kv range/put/deleterange/txn, lease grant and
keepalive, watch) as JSON over plain HTTP under /v3/, with keys and values
base64-encoded. That keeps grpc and its wheels out of the dependencies.

Failover: every call goes to the member that answered last; on a
connection error, a timeout or a 5xx/429 it moves to the next member after
a short backoff and sends the same request again, until `retry_deadline_s`.
A retried write may therefore reach etcd twice. Plain puts of the same value
are harmless when repeated; everything else the store sends is a txn whose
compare makes a second application a no-op, and the store checks for its
own first attempt when the compare fails (see store_etcd.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

__all__ = ["EtcdClient", "EtcdError", "EtcdUnavailable", "b64", "unb64", "prefix_end"]


class EtcdError(Exception):
    """etcd answered, and said no (bad request, lease not found, ...): retrying will not help."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"etcd {status} (grpc code {code}): {message}")
        self.status = status
        self.code = code
        self.message = message


class EtcdUnavailable(Exception):
    """No member answered within the retry deadline (or a watch stream broke)."""


def b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """The range_end that selects every key starting with prefix (etcd's convention)."""
    p = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"  # the whole keyspace


# grpc codes that mean "try another member / try again": Unavailable,
# DeadlineExceeded, ResourceExhausted, Aborted, Unknown (etcd's "leader changed").
_RETRY_GRPC_CODES = {14, 4, 8, 10, 2}


class EtcdClient:
    """Sends JSON-gateway calls to one of several members, failing over between them."""

    def __init__(self, endpoints: list[str], request_timeout_s: float = 2.0,
                 retry_deadline_s: float = 15.0, ssl_context: ssl.SSLContext | None = None) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.request_timeout_s = request_timeout_s
        self.retry_deadline_s = retry_deadline_s
        # Start at a random member so that several replicas spread their load.
        self._current = random.randrange(len(self.endpoints))
        self._session: aiohttp.ClientSession | None = None
        self._streams: set[aiohttp.ClientResponse] = set()
        self._closed = False
        self._ssl = ssl_context  # https:// members: TLS with this context (etcd's CA, our client certificate)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- plumbing ------------------------------------------------------------
    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise EtcdUnavailable("client is closed")
        if self._session is None or self._session.closed:
            # Created on first use so that the store can be built outside a running loop.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, ssl=self._ssl or True),
                json_serialize=json.dumps)
        return self._session

    def _fail_over(self, failed: int) -> None:
        # Only move on if nobody has moved already: concurrent failures
        # on one dead member must not skip the healthy ones.
        if self._current == failed:
            self._current = (failed + 1) % len(self.endpoints)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST body to /v3/<path> on some member; retry others on transient failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_deadline_s
        attempt = 0
        last: BaseException | None = None
        while True:
            idx = self._current
            url = f"{self.endpoints[idx]}/v3/{path}"
            try:
                session = self._get_session()
                timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
                async with session.post(url, json=body, timeout=timeout) as resp:
                    text = await resp.text()
                    status = resp.status
                data = json.loads(text) if text else {}
                if status == 200:
                    return data
                code = int(data.get("code", 0)) if isinstance(data, dict) else 0
                msg = data.get("message") or data.get("error") or text if isinstance(data, dict) else text
                if status >= 500 or status == 429 or code in _RETRY_GRPC_CODES:
                    last = EtcdUnavailable(f"{url}: {status} {msg}")
                else:
                    raise EtcdError(status, code, str(msg))
            except (TimeoutError, aiohttp.ClientError, ValueError) as e:
                last = e
            if self._closed:
                raise EtcdUnavailable("client is closed")
            self._fail_over(idx)
            attempt += 1
            # A full round of members without a pause (a dead member refuses
            # at once), then back off so a leaderless cluster is not hammered.
            pause = 0.0 if attempt < len(self.endpoints) else min(0.05 * 2 ** (attempt - len(self.endpoints)), 0.5)
            if loop.time() + pause > deadline:
                raise EtcdUnavailable(f"no etcd member answered {path} within "
                                      f"{self.retry_deadline_s}s: {last!r}") from last
            await asyncio.sleep(pause)

    # --- kv and leases -----------------------------------------------------------
    async def range(self, key: str | bytes, range_end: bytes | None = None, **opts: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key), **opts}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        return await self.call("kv/range", body)

    async def put(self, key: str | bytes, value: str | bytes, lease: int = 0) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return await self.call("kv/put", body)

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return await self.call("kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    async def grant(self, ttl_s: int) -> int:
        """A new lease; its id. etcd counts TTLs in whole seconds."""
        r = await self.call("lease/grant", {"TTL": int(ttl_s), "ID": 0})
        if r.get("error"):
            raise EtcdError(200, 0, str(r["error"]))
        return int(r["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew a lease once; its remaining TTL, 0 if it has already expired."""
        r = await self.call("lease/keepalive", {"ID": str(lease)})
        return int(r.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if e.code != 5:  # NotFound: already gone, which is what we wanted
                raise

    # --- watch -------------------------------------------------------------------
    async def watch(self, key: str | bytes, range_end: bytes | None, start_revision: int,
                    endpoint: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Yield the watch's responses ("result" objects) from one member, created one first.

        The stream ends with EtcdUnavailable when the member goes away:
        the caller decides whether to re-watch elsewhere or poll. Etcd
        sends one JSON object per line.
        """
        idx = self._current if endpoint is None else endpoint % len(self.endpoints)
        url = f"{self.endpoints[idx]}/v3/watch"
        create: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        timeout = aiohttp.ClientTimeout(total=None, connect=self.request_timeout_s, sock_read=None)
        try:
            session = self._get_session()
            async with session.post(url, json={"create_request": create}, timeout=timeout) as resp:
                if resp.status != 200:
                    raise EtcdUnavailable(f"{url}: {resp.status} {(await resp.text())[:200]}")
                self._streams.add(resp)
                try:
                    buf = b""
                    async for chunk in resp.content.iter_any():
                        buf += chunk
                        while b"\n" in buf:
                            line, buf = buf.split(b"\n", 1)
                            if not line.strip():
                                continue
                            msg = json.loads(line)
                            if "error" in msg:
                                raise EtcdUnavailable(f"{url}: watch error {msg['error']}")
                            yield msg.get("result", {})
                finally:
                    self._streams.discard(resp)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            self._fail_over(idx)
            raise EtcdUnavailable(f"watch on {url} broke: {e!r}") from e
        self._fail_over(idx)
        raise EtcdUnavailable(f"watch on {url} ended")

    async def close(self) -> None:
        """Close open watch streams and the HTTP session; later calls fail at once."""
        self._closed = True
        for resp in list(self._streams):
            resp.close()
        self._streams.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
