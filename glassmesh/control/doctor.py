"""`GET /v1/check`: what one replica knows that `glassmesh check` judges, beyond `/v1/status`.

The CLI asks every replica (that is how it learns each one is reachable) and
judges the answers itself (cli/check_cmd.py), because some checks need the
client's side: its clock, the certificate each replica presents. A replica
adds what only it has in memory or in the store:

- its own clock (`now`), so the client can say how far apart they are;
- each proxy's clock as the proxy's last call gave it (api/wire.py
  TIME_HEADER), against this replica's;
- the CA's validity, and each host's certificates with their expiry;
- which proxies answer over the ask channel (the `hello` ask, every
  serving process with the snapshot version it serves), so `links`,
  `explain` and `tap` can reach them, and no worker lags behind its host;
- config warnings: things the config allows but that are likely mistakes or
  that cost requests now (a service nobody can reach, a canary subset with no
  endpoint, a snapshot a proxy took only with a warning, a host on plain HTTP).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from glassmesh.control import ops
from glassmesh.control.api import PLANE, REPLICA, STORE, json_response
from glassmesh.control.asks import ASKS, AskError, Asks
from glassmesh.control.config import MeshConfig
from glassmesh.control.identity import CERTS_KIND
from glassmesh.control.identity_api import IDENTITY
from glassmesh.control.plane import Plane
from glassmesh.model.snapshot import Snapshot

HELLO_S = 3.0  # how long each connected proxy has to answer check's `hello` ask


def _endpoints(snapshots: dict[str, Snapshot]) -> dict[str, list[dict[str, str]]]:
    """service -> the endpoints callers are pushed (with their labels), from any host's snapshot."""
    out: dict[str, list[dict[str, str]]] = {}
    seen: set[int] = set()
    for snap in snapshots.values():
        if id(snap.services) in seen:
            continue
        seen.add(id(snap.services))
        for svc in snap.services:
            if svc.name not in out or len(svc.endpoints) > len(out[svc.name]):
                out[svc.name] = [e.labels for e in svc.endpoints]
    return out


def config_warnings(cfg: MeshConfig, snapshots: dict[str, Snapshot], ack_warnings: dict[str, str],
                    insecure: set[str]) -> list[dict[str, str]]:
    """Each warning with what to do about it; pure, for unit tests."""
    out: list[dict[str, str]] = []
    eps = _endpoints(snapshots)
    for s in cfg.services:
        serves = s.port is not None or s.instances or s.dns is not None  # else: a client only, no endpoints wanted
        labels = eps.get(s.name, [])
        if serves and not labels:
            out.append({"what": f"service {s.name} has no healthy endpoint: its callers get 503 no_endpoints",
                        "fix": f"start an instance of {s.name} (hosts that list it: "
                               f"{', '.join(h.name for h in cfg.hosts if s.name in h.services) or 'none'}); "
                               f"`glassmesh status` shows unhealthy instances"})
        for r in s.routes:
            for b in r.split:
                sub = next((x for x in s.subsets if x.name == b.subset), None)
                if sub is None or b.weight == 0:
                    continue
                want = sub.labels.items()
                if labels and not any(want <= lab.items() for lab in labels):
                    out.append({"what": f"route {r.name} of {s.name} sends weight {b.weight} to subset {b.subset}, "
                                        f"which has no healthy endpoint: that share goes to the other subsets",
                                "fix": f"start an instance labelled {dict(sub.labels)}, or set its weight to 0"})
    for host, reason in sorted(ack_warnings.items()):
        if reason:
            out.append({"what": f"host {host} took its snapshot with a warning: {reason}",
                        "fix": "see that host's proxy log; `glassmesh drain SERVICE` if emptying it is meant"})
    for host in sorted(insecure):
        out.append({"what": f"host {host} talks to the control plane over plain HTTP (--insecure-proxy-listen)",
                    "fix": f"join it with a token (`glassmesh host add {host}`), then stop serving plain HTTP"})
    return out


def _hosts(plane: Plane, certs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(plane.snapshots):
        skew, at = plane.clocks.get(name, (None, None))
        out.append({"name": name, "certs": certs.get(name, {}), "clock_skew_s": skew, "clock_at": at})
    return out


async def _hello(asks: Asks, host: str) -> dict[str, Any]:
    """The host's serving processes as they answer the `hello` ask (pid, snapshot version), or why not."""
    try:
        events = await asks.ask(host, "hello", {}, timeout_s=HELLO_S)
    except AskError as e:
        return {"error": str(e)}
    procs = events[0].get("processes", []) if events else []
    return {"processes": [p for p in procs if isinstance(p, dict)]}


async def check(request: web.Request) -> web.Response:
    """Everything this replica can tell `glassmesh check` (read-only, any operator role)."""
    plane, store = request.app[PLANE], request.app[STORE]
    status = await ops.status(store, plane, request.app[REPLICA])
    ident = request.app.get(IDENTITY)
    ca = None
    leaf_hours = None
    if ident is not None:
        cert = ident.ca.cert
        ca = {"not_before": cert.not_valid_before_utc.timestamp(), "not_after": cert.not_valid_after_utc.timestamp(),
              "sha256": ident.ca_sha256}
        leaf_hours = ident.leaf_hours
    certs = await store.records(CERTS_KIND)
    hosts = _hosts(plane, certs)
    asks = request.app.get(ASKS)
    if asks is not None:  # every proxy polling this replica, asked at once: it answers, with each process
        connected = asks.connected()
        asked = [h for h in hosts if h["name"] in connected]
        for h, answer in zip(asked, await asyncio.gather(*(_hello(asks, h["name"]) for h in asked)), strict=True):
            h["asks"] = answer
    return json_response({
        "replica": request.app[REPLICA], "now": time.time(), "ca": ca, "leaf_hours": leaf_hours,
        "status": status, "hosts": hosts,
        "warnings": config_warnings(plane.config, plane.snapshots, plane.ack_warnings, plane.insecure),
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/check", check)
