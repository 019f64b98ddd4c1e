"""The proxy-facing API: watch a snapshot (long-poll), acknowledge it, report instances.

Served over mutual TLS on the proxy listener, where `{host}` must match the
client certificate's host identity, and, only when the operator asked for
it (`--insecure-proxy-listen`, loopback), over plain HTTP for hosts that
never joined. The
handlers take the host from `host_of(request)`, which is where that check
lives (identity_api.authorize).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import time

import msgspec
from aiohttp import web

from glassmesh.api.asks import MAX_ANSWER_BYTES, POLL_WAIT_S, AnswerPost, AnswerReply, AskList
from glassmesh.api.wire import (
    BUILD_HEADER,
    FEATURES_HEADER,
    HASH_HEADER,
    KIND_HEADER,
    TIME_HEADER,
    VERSION_HEADER,
    WIRE,
    WIRE_HEADER,
    Ack,
    Report,
    clock_of,
    wire_mismatch,
    wire_of,
)
from glassmesh.control.api import PLANE, STORE, decode, error, json_response
from glassmesh.control.asks import ASKS
from glassmesh.control.identity import may_serve
from glassmesh.control.identity_api import authorize, is_tls
from glassmesh.control.layout import local_services
from glassmesh.control.store import HostRecord, InstanceRecord, StoreError

MAX_WAIT_S = 300.0
log = logging.getLogger("glassmesh.control")




async def host_of(request: web.Request) -> str:
    """The host a request speaks for: the path's, once `identity_api.authorize` has checked the caller (403).

    Also notes how the host talks to us: `status` marks a host heard over the insecure plain listener,
    and shows the wire version, build and features its proxy sent (api/wire.py, the versions rule). A
    proxy more than one wire version away is answered 426 with the reason, which status shows too.
    """
    host = await authorize(request)
    plane = request.app[PLANE]
    if is_tls(request):
        plane.insecure.discard(host)
    else:
        plane.insecure.add(host)
    h = request.headers
    wire = wire_of(h.get(WIRE_HEADER))
    refused = wire_mismatch(wire, f"the proxy of host {host}")
    now = time.time()
    sent = clock_of(h.get(TIME_HEADER))
    if sent is not None:  # the proxy's clock against ours (snapshot, ack, instances carry it): `glassmesh check`
        plane.clocks[host] = (round(sent - now, 3), now)
    plane.proxies[host] = {"wire": wire, "build": h.get(BUILD_HEADER, "") or "before 0.1 (no wire version)",
                           "features": [f for f in h.get(FEATURES_HEADER, "").split(",") if f],
                           "refused": refused or None}
    if refused:
        log.warning("%s", refused)
        raise web.HTTPUpgradeRequired(text=json.dumps({"error": refused}), content_type="application/json",
                                      headers={WIRE_HEADER: str(WIRE)})
    return host


async def snapshot(request: web.Request) -> web.Response:
    host = await host_of(request)
    plane = request.app[PLANE]
    try:
        after = int(request.query.get("after", "0"))
        wait = min(MAX_WAIT_S, max(0.0, float(request.query.get("wait", "30"))))
        base = int(request.query["base"]) if "base" in request.query else None
    except ValueError:
        return error(400, "after and base must be integers and wait a number of seconds")
    base_hash = request.query.get("hash", "")
    if plane.revision >= 0 and host not in plane.snapshots:
        # The apply that adds this host may not be compiled yet: give it a moment before saying no.
        await plane.wait_snapshot(host, -1, min(wait, 3.0))
        if host not in plane.snapshots:
            return error(404, f"host {host!r} is not in the mesh config")
    snap = await plane.wait_snapshot(host, after, wait)
    if snap is None:
        return web.Response(status=204, headers={VERSION_HEADER: str(after)})
    # A delta against the version the proxy says it holds (base, with its digest) when this replica
    # still has that version with that digest; the whole snapshot otherwise (see api/wire.py).
    kind, body, digest = plane.answer(host, snap, base, base_hash)
    return web.Response(body=body, content_type="application/json",
                        headers={VERSION_HEADER: str(snap.version), KIND_HEADER: kind, HASH_HEADER: digest,
                                 WIRE_HEADER: str(WIRE)})


async def _host_record(request: web.Request, host: str) -> HostRecord:
    store, plane = request.app[STORE], request.app[PLANE]
    rec = next((h for h in await store.hosts() if h.name == host), None)
    if rec is not None:
        return rec
    cfg = plane.config.host(host)
    return HostRecord(name=host, services=tuple(cfg.services) if cfg else (), inbound=cfg.address if cfg else "",
                      admin=(cfg.admin or "") if cfg else "")


async def ack(request: web.Request) -> web.Response:
    """Record a host's ack; the plane writes acks in batches (200 acks follow every push)."""
    host = await host_of(request)
    req: Ack = await decode(request, Ack)
    plane = request.app[PLANE]
    await plane.record_ack(host, req.version, req.accepted, req.reason)
    if req.accepted:  # `glassmesh check` lists snapshots taken with a warning
        plane.ack_warnings[host] = req.reason
    if req.hot_path and plane.builds.get(host) != req.hot_path:  # in the store, for every replica's status
        with contextlib.suppress(StoreError):  # the ack is in; the next one says it again
            await request.app[STORE].put_record("build", host, {"hot_path": req.hot_path, "at": time.time()})
            plane.builds[host] = req.hot_path
    return json_response({"host": host, "version": req.version, "accepted": req.accepted})


async def instances(request: web.Request) -> web.Response:
    host = await host_of(request)
    req: Report = await decode(request, Report)
    if not 1.0 <= req.ttl_s <= 3600.0:
        return error(400, "ttl_s must be between 1 and 3600 seconds")
    plane = request.app[PLANE]
    cfg_host = plane.config.host(host)
    runs = set(local_services(plane.config, cfg_host)) if cfg_host else set()
    now = time.time()
    reported = req.instances
    if is_tls(request):  # identity: a joined host reports only what it may serve (admitted, or put there by config)
        allowed = may_serve(await _host_record(request, host), plane.config)
        runs = (runs | allowed) if cfg_host is None else (runs & allowed)
        reported = [i for i in reported if i.service in allowed]
    own = _own_ips(cfg_host.address if cfg_host else (await _host_record(request, host)).inbound)
    refused = [i for i in reported if not _on_host(i.address, own)]
    if refused:
        log.warning("host %s reported instances that are not on it, refused: %s", host,
                    ", ".join(f"{i.service} {i.address}" for i in refused))
        reported = [i for i in reported if _on_host(i.address, own)]
    recs = [InstanceRecord(service=i.service, host=host, address=i.address, healthy=i.healthy, source="proxy",
                           checked_at=now, detail=i.detail) for i in reported]
    await request.app[STORE].put_instances(host, recs, req.ttl_s)
    ignored = sorted({i.service for i in req.instances if i.service not in runs})
    return json_response({"host": host, "instances": len(recs), "ignored_services": ignored,
                          "refused": [{"service": i.service, "address": i.address,
                                       "reason": "not on this host (loopback or its own address only)"}
                                      for i in refused]})


async def asks(request: web.Request) -> web.Response:
    """The proxy's asks long-poll (api/asks.py): what operators want to know from this host."""
    host = await host_of(request)
    try:
        wait = min(POLL_WAIT_S, max(0.0, float(request.query.get("wait", str(POLL_WAIT_S)))))
    except ValueError:
        return error(400, "wait must be a number of seconds")
    def alive() -> bool:
        t = request.transport
        return t is not None and not t.is_closing()

    got = await request.app[ASKS].poll(host, wait, alive)
    return web.Response(body=msgspec.json.encode(AskList(asks=got)), content_type="application/json")


async def answer(request: web.Request) -> web.Response:
    """A batch of one ask's answer; 404 when the ask is not this host's or its asker has left."""
    host = await host_of(request)
    if (request.content_length or 0) > MAX_ANSWER_BYTES:
        return error(413, f"an answer batch is at most {MAX_ANSWER_BYTES} bytes: post smaller batches")
    body = await request.content.read(MAX_ANSWER_BYTES + 1)
    if len(body) > MAX_ANSWER_BYTES:
        return error(413, f"an answer batch is at most {MAX_ANSWER_BYTES} bytes: post smaller batches")
    try:
        post = msgspec.json.decode(body, type=AnswerPost)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        return error(400, f"bad answer: {e}")
    try:
        more = await request.app[ASKS].answer(host, request.match_info["id"], post.events, post.done, post.error)
    except KeyError:
        return error(404, "no such ask open for this host (its asker may have left)")
    return web.Response(body=msgspec.json.encode(AnswerReply(more=more)), content_type="application/json")


def _own_ips(inbound: str) -> set[str]:
    """The addresses an instance of this host may have besides loopback: its inbound address's IP."""
    return {inbound.rpartition(":")[0].strip("[]")} if inbound else set()


def _on_host(address: str, own: set[str]) -> bool:
    """An inbound proxy delivers only on its own host: loopback, or its own IP.

    A report naming another machine's address would have the host's inbound
    deliver its callers' authenticated requests there.
    """
    ip = address.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(ip).is_loopback or ip in own
    except ValueError:
        return False


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/hosts/{host}/snapshot", snapshot)
    app.router.add_post("/v1/hosts/{host}/ack", ack)
    app.router.add_post("/v1/hosts/{host}/instances", instances)
    app.router.add_get("/v1/hosts/{host}/asks", asks)
    app.router.add_post("/v1/hosts/{host}/asks/{id}", answer)
