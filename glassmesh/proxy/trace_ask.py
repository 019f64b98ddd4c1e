"""The `trace` ask (proxy/asks.py): this host's records of one request, from every serving process's ring.

The control plane asks the host that minted the id, then each host a record
names as its next hop (api/trace.py). Each record says which host its
outbound side sent the request to (`next_host`, the endpoint's host as the
table in force names it), which is what lets the control plane follow the
path without asking any other host.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from glassmesh.api.trace import ID_SHAPE
from glassmesh.proxy.ring import Rec, row, wall_offset

MAX_RECORDS = 64  # per process and id: an id many requests reuse (an app's constant x-request-id) stays small
BATCH = 256  # records per answer post (api/asks.py bounds a post's events and bytes)


async def trace(args: dict[str, Any], emit: Callable[[list[dict[str, Any]]], Awaitable[bool]],
                query: Callable[[str, dict[str, str]], Awaitable[list[Any]]]) -> None:
    ident = str(args.get("id", ""))
    if not ID_SHAPE.fullmatch(ident):
        raise ValueError("a request id is 1 to 128 printable characters without spaces")
    records = [rec for answer in await query("trace", {"id": ident}) for rec in (answer or [])]
    for i in range(0, len(records), BATCH):  # 64 records from each of up to 64 workers: several posts
        if not await emit(records[i:i + BATCH]):
            return


def trace_process(rt: Any, params: dict[str, str]) -> list[dict[str, Any]]:
    """This process's records of the id (a request id, or a trace id), oldest first."""
    ring = rt.ring
    if ring is None:
        return []
    wall = wall_offset()
    found = ring.find(params.get("id", "").encode("latin-1", "replace"))[-MAX_RECORDS:]
    out = []
    for rec in found:
        d = row(rec, rt.host, next_host(rt, rec, rec.key), wall)
        if rec.tried:  # earlier tries went elsewhere: their hosts hold records of this request too
            tried = sorted({h for h in (next_host(rt, rec, k) for k in rec.tried) if h})
            if tried:
                d["tried_hosts"] = tried
        out.append(d)
    return out


def next_host(rt: Any, rec: Rec, key: Any) -> str | None:
    """The mesh host at endpoint `key` ((ip, port) or a pool key) of an outbound record's destination, or None."""
    if rec.side != "outbound" or key is None or (hasattr(key, "source") and key.source is None):
        return None
    remote = rt.table.remotes.get(rec.destination or "")
    if remote is None:
        return None
    for ep in remote.chain.endpoints:
        if ep.host == key[0] and ep.port == key[1]:
            return str(ep.host_name) if ep.mesh else None
    return None
