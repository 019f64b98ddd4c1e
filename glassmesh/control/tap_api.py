"""`GET /v1/tap` (operators): the exchanges crossing the proxies, live, as NDJSON (api/tap.py).

The control plane asks each matching host's proxy for a tap over the ask
channel (control/asks.py) and passes the events on as they come, one JSON
object a line. Like every /v1 operator route it needs an operator
credential (identity_api.listener_guard); a host's identity is refused on
the operator listener, and the proxy listener does not serve this route.
A read-only operator may tap what happened (who called whom, statuses,
times, headers with credentials redacted); bodies, credentials and a
capture's bytes need the admin role.

Which hosts: `host=H1,H2` when given; else the hosts that run `from`'s
service (their outbound side sees its calls) and `to`'s (their inbound side
sees them arrive), as `side` allows; else every connected host. A stream
ends when the operator goes away (its proxies hear `more: false` at their
next batch), when every host's tap is done (`seconds`), or when the replica
shuts down. While nothing happens, an empty line every KEEPALIVE_S keeps
proxies and load balancers from closing the stream, and shows whether the
operator is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec
from aiohttp import web

from glassmesh.api.tap import TapArgs, TapArgsError
from glassmesh.control.api import PLANE, STORE, error
from glassmesh.control.asks import ASKS, AskError, Asks
from glassmesh.control.compile import effective_hosts
from glassmesh.control.layout import local_services
from glassmesh.control.operator_auth import OPERATOR_KEY, Operator
from glassmesh.control.schema import MeshConfig
from glassmesh.stopping import cancel_and_wait

KEEPALIVE_S = 2.0
QUEUE = 2000  # events waiting for a slow operator, and their bytes; more are counted and reported as dropped
QUEUE_BYTES = 64 << 20
SHUTTING_DOWN = web.AppKey("tap_shutting_down", asyncio.Event)  # set by the app's on_shutdown: streams end


def hosts_running(cfg: MeshConfig, hosts: list[Any], service: str) -> set[str]:
    return {h.name for h in effective_hosts(cfg, hosts) if service in local_services(cfg, h)}


async def targets(request: web.Request, args: TapArgs, named: str) -> list[str]:
    """The hosts to ask, by name or by the services in the filter (see the module docstring)."""
    asks: Asks = request.app[ASKS]
    if named:
        return sorted({h.strip() for h in named.split(",") if h.strip()})
    cfg = request.app[PLANE].config
    records = await request.app[STORE].hosts()
    out: set[str] = set()
    for side, service in (("outbound", args.source), ("inbound", args.destination)):
        if args.side and args.side != side:
            continue
        if not service:
            return sorted(asks.connected())
        out |= hosts_running(cfg, records, service)
    return sorted(out)


async def tap(request: web.Request) -> web.StreamResponse:
    q = dict(request.query)
    named = q.pop("host", "")
    try:
        args = TapArgs.parse(q)
    except TapArgsError as e:
        return error(400, str(e))
    op: Operator | None = request.get(OPERATOR_KEY)
    if op is not None and op.role != "admin" and (args.body or args.wire or args.secrets):
        # What the traffic said (bodies, credentials, a capture's bytes) is the admins'; who called whom,
        # when and how it went is anyone's who may read the mesh.
        return error(403, f"operator {op.name!r} is {op.role}: bodies, secrets and captures need the admin role "
                          f"(tap without --body and --show-secrets is open to {op.role})")
    asks: Asks = request.app[ASKS]
    hosts = await targets(request, args, named)
    connected = asks.connected()
    live = [h for h in hosts if h in connected]
    missing = [h for h in hosts if h not in connected]
    if not live:
        what = ", ".join(missing) if missing else "no host runs the services in the filter"
        return error(503, f"nothing to tap: {what}" + (" (not connected to this control-plane replica)"
                                                      if missing else ""))
    resp = web.StreamResponse(headers={"content-type": "application/x-ndjson", "cache-control": "no-store"})
    await resp.prepare(request)
    encode = msgspec.json.encode
    await resp.write(encode({"tap": {"hosts": live, "not_connected": missing, "args": args.query()}}) + b"\n")
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    queued = dropped = 0  # bytes waiting for the operator; events dropped for want of room
    wire_args = args.query()

    async def pump(host: str) -> None:
        nonlocal queued, dropped
        try:
            async with asks.stream(host, "tap", wire_args) as events:
                async for ev in events:
                    ev.setdefault("host", host)
                    line = encode(ev) + b"\n"
                    if queue.qsize() >= QUEUE or queued + len(line) > QUEUE_BYTES:
                        dropped += 1
                        continue
                    queued += len(line)
                    queue.put_nowait(line)
        except AskError as e:
            queue.put_nowait(encode({"error": str(e), "host": host}) + b"\n")
        finally:
            queue.put_nowait(None)

    closing = request.app[SHUTTING_DOWN]
    pumps = [asyncio.create_task(pump(h)) for h in live]
    running = len(pumps)
    try:
        while running and not closing.is_set():
            try:
                async with asyncio.timeout(KEEPALIVE_S):  # not wait_for: on 3.11 it can swallow a stop (keygen.py)
                    line = await queue.get()
            except TimeoutError:
                await resp.write(b"\n")
                continue
            if line is None:
                running -= 1
                continue
            queued -= len(line)
            if dropped:
                await resp.write(encode({"dropped": dropped, "host": "control plane", "pid": 0}) + b"\n")
                dropped = 0
            await resp.write(line)
    except ConnectionError:
        return resp  # the operator left: the pumps' streams (cancelled below) tell each proxy to stop
    finally:
        await cancel_and_wait(*pumps)
    with contextlib.suppress(ConnectionError):
        await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    shutting_down = app[SHUTTING_DOWN] = asyncio.Event()

    async def end_streams(app: web.Application) -> None:
        shutting_down.set()

    app.on_shutdown.append(end_streams)
    app.router.add_get("/v1/tap", tap)
