"""The operator's HTTP API (`/v1/apply`, `/v1/config`, ...): JSON in, JSON out, thin over `ops`.

Payloads are decoded strictly with msgspec, so a client bug is a 400 naming
the field, never a 500.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from glassmesh.control import metrics as control_metrics
from glassmesh.control import ops
from glassmesh.control.config import canonical_yaml
from glassmesh.control.operator_auth import author
from glassmesh.control.plane import Plane
from glassmesh.control.store import Store

_S = {"forbid_unknown_fields": True, "kw_only": True}
PLANE = web.AppKey("plane", Plane)
STORE = web.AppKey("store", Store)
REPLICA = web.AppKey("replica", str)


class ApplyReq(msgspec.Struct, **_S):
    yaml: str
    author: str = "unknown"  # accepted from older clients, never recorded: the credential names the author
    dry_run: bool = False
    filename: str = "mesh.yaml"
    expected_version: int | None = None


class RollbackReq(msgspec.Struct, **_S):
    version: int
    author: str = "unknown"


class ServiceReq(msgspec.Struct, **_S):
    service: str
    author: str = "unknown"
    undo: bool = False


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


async def decode(request: web.Request, typ: type[Any]) -> Any:
    """The request body as `typ`, or a 400 (raised) that names the bad field."""
    body = await request.read()
    try:
        return msgspec.json.decode(body, type=typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise web.HTTPBadRequest(body=msgspec.json.encode({"error": f"bad request body: {e}"}),
                                 content_type="application/json") from None


async def apply(request: web.Request) -> web.Response:
    req: ApplyReq = await decode(request, ApplyReq)
    plane = request.app[PLANE]
    out = await ops.apply(request.app[STORE], req.yaml, author(request), filename=req.filename, dry_run=req.dry_run,
                          expected_version=req.expected_version, trust_domain=plane.trust_domain)
    return json_response(out)


async def get_config(request: web.Request) -> web.Response:
    cur = await request.app[STORE].current()
    if cur is None:
        return json_response({"version": 0, "yaml": "", "sha256": None})
    return json_response({**ops.version_json(cur, with_doc=True), "yaml": canonical_yaml(cur.doc)})


async def history(request: web.Request) -> web.Response:
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "50"))))
    except ValueError:
        return error(400, "limit must be an integer")
    return json_response({"versions": [ops.version_json(v) for v in await request.app[STORE].history(limit)]})


async def rollback(request: web.Request) -> web.Response:
    req: RollbackReq = await decode(request, RollbackReq)
    return json_response(await ops.rollback(request.app[STORE], req.version, author(request)))


async def status(request: web.Request) -> web.Response:
    return json_response(await ops.status(request.app[STORE], request.app[PLANE], request.app[REPLICA]))


async def version(request: web.Request) -> web.Response:
    """This replica's release and runtime, for `glassmesh version` (any operator role may read it)."""
    import platform

    from glassmesh import __version__

    return json_response({"version": __version__, "replica": request.app[REPLICA],
                          "python": platform.python_version()})


async def metrics(request: web.Request) -> web.Response:
    doc = await ops.status(request.app[STORE], request.app[PLANE], request.app[REPLICA])
    return web.Response(body=control_metrics.render(doc), content_type="text/plain", charset="utf-8",
                        headers={"cache-control": "no-store"})


async def release(request: web.Request) -> web.Response:
    req: ServiceReq = await decode(request, ServiceReq)
    return json_response(await ops.release(request.app[STORE], req.service))


async def drain(request: web.Request) -> web.Response:
    req: ServiceReq = await decode(request, ServiceReq)
    if not req.undo and request.app[PLANE].config.service(req.service) is None:
        return error(404, f"{req.service!r} is not a service in the current config")
    return json_response(await ops.drain(request.app[STORE], req.service, author(request), req.undo))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/apply", apply)
    app.router.add_get("/v1/config", get_config)
    app.router.add_get("/v1/history", history)
    app.router.add_post("/v1/rollback", rollback)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/release", release)
    app.router.add_post("/v1/drain", drain)
