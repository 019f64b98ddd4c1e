"""`GET /v1/explain?from=A&to=B&path=P&method=M`: what happens now to such a request, hop by hop.

Everything is read as the caller's proxy has it: the snapshot this replica
compiled for a host that runs A, and (when that proxy is connected) the
proxy's own view of B's endpoints through the `endpoints` ask (health,
ejection, load, latency). The route is picked by the proxy's own code
(proxy/chain.compile_chain and RouteTable.match, the very functions the
outbound side runs), so explain cannot drift from what the proxy does.

Pure parts (`explain_snapshot`) take snapshots and return JSON, for unit
tests; the handler adds the live endpoints and the certificates' expiry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from glassmesh.control.api import PLANE, STORE, error, json_response
from glassmesh.control.asks import ASKS, AskError, Asks
from glassmesh.control.identity import CERTS_KIND
from glassmesh.model.snapshot import Snapshot
from glassmesh.proxy.chain import compile_chain
from glassmesh.proxy.stages.route import DEFAULT_POLICY, CompiledRoute


class ExplainError(Exception):
    """The question cannot be answered as asked (no such service, no host runs the caller)."""


def _split(route: CompiledRoute, labels: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    s = route.split
    out = []
    prev = 0.0
    for name, bal, cum in zip(s.names, s.balancers, s.cumulative, strict=True):
        weight = cum - prev
        prev = cum
        out.append({"subset": name.decode() or None, "weight": weight, "share": round(weight / s.total, 6),
                    "endpoints": [{"host": ep.host_name, "address": f"{ep.host}:{ep.port}",
                                   "labels": labels.get(f"{ep.host}:{ep.port}", {})} for ep in bal.endpoints]})
    return out


def _fields(struct: Any) -> dict[str, Any]:
    """A flat struct's fields, defaults included (the snapshot's JSON leaves defaults out)."""
    return {f: getattr(struct, f) for f in struct.__struct_fields__}


def _match_doc(snap_route: Any) -> dict[str, Any]:
    return {k: v for k, v in msgspec.to_builtins(snap_route.match).items() if v not in (None, [], {})}


def explain_snapshot(snapshots: dict[str, Snapshot], source: str, destination: str, method: str, path: str,
                     headers: dict[str, str], host: str | None = None) -> dict[str, Any]:
    """What the caller's proxy does with the request, from the compiled snapshots alone."""
    callers = [h for h, s in sorted(snapshots.items()) if s.local(source) is not None]
    if host is not None:
        if host not in callers:
            raise ExplainError(f"host {host} does not run {source}" + (f" (hosts that do: {', '.join(callers)})"
                                                                       if callers else ""))
        callers = [host]
    if not callers:
        raise ExplainError(f"no host runs {source}: explain shows a request as its caller's proxy sees it")
    snap = snapshots[callers[0]]
    local = snap.local(source)
    assert local is not None
    doc: dict[str, Any] = {"from": source, "to": destination, "host": snap.host, "caller_hosts": callers,
                           "snapshot_version": snap.version,
                           "request": {"method": method, "path": path, "headers": headers}}
    svc = snap.service(destination)
    dest_hosts = [(h, s.local(destination)) for h, s in sorted(snapshots.items()) if s.local(destination) is not None]
    inbound = [{"host": h, "allowed": ls.callers is None or source in ls.callers,
                "callers": ls.callers} for h, ls in dest_hosts if ls is not None]
    if svc is None:
        why = (f"403 call_not_allowed: {source}'s calls: does not list {destination}"
               if destination in snap.withheld_services else
               f"404 unknown_service: no service {destination} in host {snap.host}'s snapshot")
        doc["authorization"] = {"allowed": False, "outbound": why, "inbound": inbound}
        return doc
    refused = [i["host"] for i in inbound if not i["allowed"]]
    doc["authorization"] = {
        "allowed": not refused,
        "outbound": f"allowed: {source} may call {destination}" + ("" if local.calls is None else
                                                                     f" (calls: {', '.join(local.calls)})"),
        "inbound": inbound,
    }
    if svc.protocol == "tcp":
        doc["protocol"] = "tcp"
        return doc
    chain = compile_chain(svc, None, time.monotonic())
    hdrs = {k.lower().encode(): v.encode() for k, v in headers.items()}
    route = chain.routes.match(method.upper().encode(), path.encode(), hdrs.get)
    pol = svc.policy if svc.policy is not None else DEFAULT_POLICY
    by_name = {r.name: r for r in pol.routes}
    labels = {e.address: e.labels for e in svc.endpoints}
    name = route.name.decode()
    spec = by_name.get(name)
    names = [r.name for r in pol.routes]
    passed = names[: names.index(name)] if name in names else names
    doc["route"] = {
        "name": name, "match": _match_doc(spec) if spec else None,
        "not_matched": passed,  # the routes tried before it, in order
        "split": _split(route, labels),
        "timeout_ms": round(route.timeout_s * 1000) or None, "idle_timeout_ms": round(route.idle_timeout_s * 1000) or None,
        "retry": None if route.retry is None else {"attempts": route.retry.attempts,
                                                   "on_status": sorted(route.retry.on_status),
                                                   "connect_failures": route.retry.connect_failures},
        "fault": None if spec is None or spec.fault is None else _fields(spec.fault),
        "mirror": None if spec is None or spec.mirror is None else _fields(spec.mirror),
    }
    doc["policy"] = {"balance": pol.balance, "retry_budget": _fields(pol.retry_budget),
                     "outlier": None if pol.outlier is None else _fields(pol.outlier),
                     "limits": {k: v for k, v in _fields(pol.limits).items() if v is not None}}
    doc["timeouts_ms"] = _fields(snap.timeouts)
    doc["endpoints"] = [{"host": e.host, "address": e.address, "labels": e.labels} for e in svc.endpoints]
    return doc


def _certs(records: dict[str, dict[str, Any]], live: dict[str, dict[str, Any]], source: str, destination: str,
           doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each certificate the request is carried with: the caller's, then the destination's on each of its hosts.

    As the proxy read it from the file it serves with (`certs` ask) when it answered, else as the control
    plane issued it (joined hosts), else unknown (files put there by hand, a proxy that did not answer).
    """
    out = []
    for service, host in [(source, doc["host"]), *((destination, i["host"]) for i in doc["authorization"]["inbound"])]:
        seen = live.get(host, {}).get(service, {})
        out.append({"service": service, "host": host, "spiffe_id": seen.get("spiffe_id"),
                    "not_after": seen.get("not_after") or records.get(host, {}).get(f"service/{service}"),
                    "source": "proxy" if seen.get("not_after") else "issued" if
                    records.get(host, {}).get(f"service/{service}") else None,
                    "error": seen.get("error")})
    return out


async def _ask(asks: Asks, host: str, kind: str, args: dict[str, Any]) -> dict[str, Any] | str:
    """The first event of one ask, or why there is none."""
    try:
        events = await asks.ask(host, kind, args, timeout_s=5.0)
    except AskError as e:
        return str(e)
    return events[0] if events else "no answer"


async def explain(request: web.Request) -> web.Response:
    q = request.query
    source, destination = q.get("from", ""), q.get("to", "")
    if not source or not destination:
        return error(400, "give from=SERVICE and to=SERVICE")
    plane = request.app[PLANE]
    for s in (source, destination):
        if plane.config.service(s) is None:
            return error(404, f"{s!r} is not a service in the current config")
    headers = {}
    for h in q.getall("header", []):
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            return error(400, f"header {h!r}: give NAME:VALUE")
        headers[k.strip().lower()] = v.strip()
    path = q.get("path", "/")
    if not path.startswith("/"):
        return error(400, f"path {path!r} must start with /")
    try:
        doc = explain_snapshot(plane.snapshots, source, destination, q.get("method", "GET").upper(), path, headers,
                               q.get("host") or None)
    except ExplainError as e:
        return error(404, str(e))
    asks = request.app[ASKS]
    hosts = [doc["host"], *(i["host"] for i in doc["authorization"]["inbound"] if i["host"] != doc["host"])]
    jobs = [_ask(asks, h, "certs", {}) for h in hosts]
    if "endpoints" in doc:
        jobs.append(_ask(asks, doc["host"], "endpoints", {"service": destination}))
    got = await asyncio.gather(*jobs)
    certs = {h: a["services"] for h, a in zip(hosts, got, strict=False) if isinstance(a, dict)}
    doc["certificates"] = _certs(await request.app[STORE].records(CERTS_KIND), certs, source, destination, doc)
    doc["live"] = None
    if "endpoints" in doc:
        live = got[-1]
        if isinstance(live, dict):
            doc["live"] = live
        else:
            doc["live_error"] = live
    return json_response(doc)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/explain", explain)
