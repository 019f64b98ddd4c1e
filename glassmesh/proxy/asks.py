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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from glassmesh.proxy import tap
from glassmesh.proxy.stats import merge
from glassmesh.proxy.trace_ask import trace, trace_process

Emit = Callable[[list[dict[str, Any]]], Awaitable[bool]]  # False: the asker is gone, stop
Query = Callable[[str, dict[str, str]], Awaitable[list[Any]]]  # (route, params) -> one answer per serving process
Handler = Callable[[dict[str, Any], Emit, Query], Awaitable[None]]
ProcessRoute = Callable[[Any, dict[str, str]], Any]  # (runtime, params) -> JSON-able, or an awaitable of it

async def _hello(args: dict[str, Any], emit: Emit, query: Query) -> None:
    await emit([{"pid": os.getpid(), "processes": await query("hello", {})}])


def _hello_process(rt: Any, params: dict[str, str]) -> dict[str, Any]:
    return {"pid": os.getpid(), "snapshot_version": rt.snapshot.version}


async def _links(args: dict[str, Any], emit: Emit, query: Query) -> None:
    """The link counters of every serving process, summed (`glassmesh links` takes rates from two of these)."""
    dumps = await query("links", {})
    good = [d for d in dumps if "error" not in d]
    await emit([{"at": time.time(), "processes": len(good), "stats": merge(good),
                 "errors": [d["error"] for d in dumps if "error" in d]}])


def _links_process(rt: Any, params: dict[str, str]) -> dict[str, Any]:
    d: dict[str, Any] = rt.stats.dump()
    d["endpoints"] = []  # not what links shows; the `endpoints` ask carries them
    return d


async def _endpoints(args: dict[str, Any], emit: Emit, query: Query) -> None:
    """What the outbound side knows of each endpoint (health, ejection, load), every process's view merged:
    an endpoint is ejected where any worker ejected it (`glassmesh explain`)."""
    rows = await query("endpoints", {"service": str(args.get("service", ""))})
    good = [r for r in rows if "error" not in r]
    merged = merge({"links": [], "errors": [], "client_conns": 0, **r} for r in good)
    await emit([{"processes": len(good), "snapshot_version": merged["snapshot_version"],
                 "endpoints": merged["endpoints"], "errors": [r["error"] for r in rows if "error" in r]}])


def _endpoints_process(rt: Any, params: dict[str, str]) -> dict[str, Any]:
    service = params.get("service", "")
    return {"snapshot_version": rt.snapshot.version,
            "endpoints": [r for r in rt.endpoint_rows() if not service or r["service"] == service]}


async def _certs(args: dict[str, Any], emit: Emit, query: Query) -> None:
    """The certificates this proxy presents, per local service, as read from the files in force."""
    answers = [a for a in await query("certs", {}) if "error" not in a]
    await emit([answers[0] if answers else {"services": {}}])


def _certs_process(rt: Any, params: dict[str, str]) -> dict[str, Any]:
    from cryptography import (
        x509,  # only when asked: a proxy from a file does not load it (test_proxy_footprint)
    )

    out: dict[str, Any] = {}
    for ls in rt.snapshot.local_services:
        try:
            with open(ls.cert, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            out[ls.name] = {"not_after": cert.not_valid_after_utc.timestamp(),
                            "spiffe_id": next(iter(san.get_values_for_type(x509.UniformResourceIdentifier)), "")}
        except (OSError, ValueError, x509.ExtensionNotFound) as e:
            out[ls.name] = {"error": f"{ls.cert}: {e}"}
    return {"services": out}


HANDLERS: dict[str, Handler] = {
    "hello": _hello,
    "links": _links,
    "endpoints": _endpoints,
    "certs": _certs,
    "tap": tap.handle,
    "trace": trace,
}

PROCESS_ROUTES: dict[str, ProcessRoute] = {
    "hello": _hello_process,
    "links": _links_process,
    "endpoints": _endpoints_process,
    "certs": _certs_process,
    "tap": tap.process_route,
    "trace": trace_process,
}


async def run_process_route(rt: Any, name: str, params: dict[str, str]) -> Any:
    """One serving process's answer to `name` (KeyError when there is no such route)."""
    out = PROCESS_ROUTES[name](rt, params)
    if inspect.isawaitable(out):
        out = await out
    return out


