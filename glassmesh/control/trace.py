"""`GET /v1/trace/{id}` (operators): one request's records from the proxies on its path, as one timeline.

It asks only the proxies the request crossed, over the ask channel: first
the host that minted the id (its tag, api/trace.py) or the host the
operator names (`?host=`), then each host a record names as its next hop,
at most api.trace.MAX_HOPS hosts. A mesh of 200 hosts is never asked whole.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from glassmesh.api.trace import ID_SHAPE, MAX_HOPS, origin_hosts, timeline
from glassmesh.control.api import PLANE, error, json_response
from glassmesh.control.asks import ASKS, AskError

ASK_TIMEOUT_S = 5.0


async def trace(request: web.Request) -> web.Response:
    ident = request.match_info["id"]
    if not ID_SHAPE.fullmatch(ident):
        return error(400, "a request id is 1 to 128 printable characters without spaces")
    asks = request.app[ASKS]
    known = sorted(set(request.app[PLANE].snapshots) | asks.connected())
    named = request.query.get("host", "")
    if named:
        if named not in known:
            return error(404, f"no host named {named!r} in the mesh")
        first = [named]
    else:
        first = origin_hosts(ident, known)
        if not first:
            return error(400, f"{ident!r} was not minted by a glassmesh proxy of this mesh (an app may have set its "
                              f"own x-request-id): name the caller's host with --host HOST")
    asked: list[str] = []
    todo = list(first)
    records: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    while todo and len(asked) < MAX_HOPS:
        wave, todo = todo, []
        asked += wave
        answers = await asyncio.gather(*(_ask(asks, h, ident) for h in wave))
        for host, (recs, problem) in zip(wave, answers, strict=True):
            if problem:
                problems.append({"host": host, "error": problem})
            records += recs
        for r in records:
            for nxt in [r.get("next_host"), *r.get("tried_hosts", ())]:
                if nxt and nxt not in asked and nxt not in todo and nxt in known:
                    todo.append(nxt)
    if not records and problems:
        return error(503, "; ".join(f"cannot ask {p['host']}: {p['error']}" for p in problems))
    if not records:
        where = ", ".join(asked)
        return error(404, f"no record of {ident} on {where}: the proxy keeps its most recent requests (failures "
                          f"longest); an older one is gone, or the id was never seen there")
    return json_response({"id": ident, "hosts_asked": asked, "problems": problems, "records": records,
                          "timeline": timeline(records)})


async def _ask(asks: Any, host: str, ident: str) -> tuple[list[dict[str, Any]], str]:
    try:
        return await asks.ask(host, "trace", {"id": ident}, timeout_s=ASK_TIMEOUT_S), ""
    except AskError as e:
        return [], str(e)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/trace/{id}", trace)
