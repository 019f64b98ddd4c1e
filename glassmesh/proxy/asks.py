"""The proxy's end of the ask channel (api/asks.py): take asks from the control plane, answer them.

One long-poll per control-plane replica (an operator may reach any of
them), run by the process that talks to the control plane: alone, the one
process; with `--workers N`, the supervisor, which serves no traffic. So a
handler never touches a Runtime itself: it calls `query(route, params)`,
which runs `PROCESS_ROUTES[route]` in every serving process (in process
when alone; over each worker's private unix socket, 0600 in a 0700 run
directory, under a supervisor; never on the TCP admin port) and returns one
answer per process.

Handlers are registered in HANDLERS (kind -> handler) and PROCESS_ROUTES
(name -> fn(runtime, params)), one line per feature. The loop that polls
and posts is askloop.py: a proxy from a file (no control plane) loads
neither it nor aiohttp.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any

from glassmesh.proxy.trace_ask import trace, trace_process

Emit = Callable[[list[dict[str, Any]]], Awaitable[bool]]  # False: the asker is gone, stop
Query = Callable[[str, dict[str, str]], Awaitable[list[Any]]]  # (route, params) -> one answer per serving process
Handler = Callable[[dict[str, Any], Emit, Query], Awaitable[None]]
ProcessRoute = Callable[[Any, dict[str, str]], Any]  # (runtime, params) -> JSON-able, or an awaitable of it

async def _hello(args: dict[str, Any], emit: Emit, query: Query) -> None:
    await emit([{"pid": os.getpid(), "processes": await query("hello", {})}])


def _hello_process(rt: Any, params: dict[str, str]) -> dict[str, Any]:
    return {"pid": os.getpid(), "snapshot_version": rt.snapshot.version}


HANDLERS: dict[str, Handler] = {
    "hello": _hello,
    "trace": trace,
}

PROCESS_ROUTES: dict[str, ProcessRoute] = {
    "hello": _hello_process,
    "trace": trace_process,
}


async def run_process_route(rt: Any, name: str, params: dict[str, str]) -> Any:
    """One serving process's answer to `name` (KeyError when there is no such route)."""
    out = PROCESS_ROUTES[name](rt, params)
    if inspect.isawaitable(out):
        out = await out
    return out


