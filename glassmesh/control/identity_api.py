"""HTTP front of identity.py: admitting hosts (operator), joining and certificates (proxies), and who may call what.

The control plane listens twice:

- the operator listener (`--listen`, TLS): the operator API, `POST /v1/hosts`
  included, for operators with a credential (operator_auth.py);
- optionally (`--insecure-proxy-listen`, plain HTTP, loopback only): the proxy
  routes for proxies without a host identity (certificate files put in
  DIR/certs by hand, as before joins existed), never a certificate;
- the proxy listener (`--proxy-listen`, TLS with the CA's own server certificate):
  `GET /v1/ca` and `POST /v1/join` for anyone (a joining proxy has no certificate
  yet; the join token is the credential), every other route only with a client
  certificate from the CA whose SPIFFE ID is the host in the path.

`listener_guard` keeps each route on its listener, and `authorize` is the one
place that says which host a proxy request speaks for.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from glassmesh.control.api import STORE, decode, error, json_response
from glassmesh.control.identity import DEFAULT_TOKEN_TTL_S, Forbidden, Identity
from glassmesh.control.operator_auth import OPERATOR_KEY, authenticate

_S = {"forbid_unknown_fields": True, "kw_only": True}
IDENTITY = web.AppKey("identity", Identity)

# Routes served on the proxy listener (by resource pattern); everything else is operator-only.
PROXY_ROUTES = frozenset({
    "/v1/ca", "/v1/join", "/v1/hosts/{host}/snapshot", "/v1/hosts/{host}/ack", "/v1/hosts/{host}/instances",
    "/v1/hosts/{host}/certs", "/v1/hosts/{host}/renew", "/v1/hosts/{host}/asks", "/v1/hosts/{host}/asks/{id}",
})
# Routes that hand out certificates: never over plain HTTP.
TLS_ONLY_ROUTES = frozenset({"/v1/join", "/v1/hosts/{host}/certs", "/v1/hosts/{host}/renew"})


class AddHostReq(msgspec.Struct, **_S):
    name: str
    services: list[str]
    ttl_s: float = DEFAULT_TOKEN_TTL_S
    address: str = ""  # the host's inbound ip:port, for a host that mesh.yaml does not list


class JoinReq(msgspec.Struct, **_S):
    token: str
    csr_pem: str


class CertReq(msgspec.Struct, **_S):
    service: str
    csr_pem: str


class RenewReq(msgspec.Struct, **_S):
    csr_pem: str


def is_tls(request: web.Request) -> bool:
    """True when the request came in on the proxy (TLS) listener."""
    t = request.transport
    return t is not None and t.get_extra_info("sslcontext") is not None


def peer_spiffe_id(request: web.Request) -> str | None:
    """The SPIFFE ID of the verified client certificate, or None when the client sent none."""
    t = request.transport
    cert = t.get_extra_info("peercert") if t is not None else None
    for kind, value in (cert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith("spiffe://"):
            return str(value)
    return None


def _identity(request: web.Request) -> Identity:
    ident = request.app.get(IDENTITY)
    if ident is None:
        raise web.HTTPNotFound(body=msgspec.json.encode({"error": "this control plane runs without a CA"}),
                               content_type="application/json")
    return ident


async def authorize(request: web.Request) -> str:
    """The host a proxy request speaks for, once the caller is shown to be it (403 otherwise).

    Over TLS: the client certificate's SPIFFE ID must be spiffe://<td>/host/<host>.
    Over plain HTTP (the operator listener): allowed only for hosts that never
    joined, so a joined host's snapshot cannot be read, nor its instances
    faked, without its key.
    """
    host = request.match_info["host"]
    ident = request.app.get(IDENTITY)
    if is_tls(request):
        assert ident is not None
        peer = peer_spiffe_id(request)
        if peer is None:
            raise _forbidden(f"a host certificate is required to act for host {host!r}")
        if ident.host_of_peer(peer) != host:
            raise _forbidden(f"the client certificate is {peer}; it may not act for host {host!r}")
        return host
    if ident is not None:
        h = await request.app[STORE].host(host)
        if h is not None and h.cert_not_after > 0:
            raise _forbidden(f"host {host!r} has a host identity: it is served only over mutual TLS "
                             f"on the proxy listener")
    return host


def _forbidden(message: str) -> web.HTTPForbidden:
    return web.HTTPForbidden(body=msgspec.json.encode({"error": message}), content_type="application/json")


# Which listener a connection came in on, by its local port (set by server.serve).
LISTENERS = web.AppKey("listeners", dict)
OPERATOR_LISTENER, PROXY_LISTENER, INSECURE_LISTENER = "operator", "proxy", "insecure-proxy"


def listener_of(request: web.Request) -> str:
    t = request.transport
    sockname = t.get_extra_info("sockname") if t is not None else None
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) > 1 else None
    return str(request.app.get(LISTENERS, {}).get(port, OPERATOR_LISTENER))


@web.middleware
async def listener_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Each route on its own listener; every operator call authenticated (operator_auth.py).

    - the proxy listener (mTLS): the proxy routes, each checked by `authorize`;
    - the insecure proxy listener (plain HTTP, loopback, only with --insecure-proxy-listen): the proxy
      routes for hosts that never joined, and never a certificate;
    - the operator listener (TLS): everything else, for operators with a credential.
    """
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else None
    kind = listener_of(request)
    if kind == PROXY_LISTENER:
        if route not in PROXY_ROUTES:
            return error(404, f"{request.path} is not served on the proxy listener")
    elif kind == INSECURE_LISTENER:
        if route in TLS_ONLY_ROUTES:
            return error(403, f"{request.path} is served only over TLS on the proxy listener (--proxy-listen)")
        if route not in PROXY_ROUTES:
            return error(404, f"{request.path} is not served on the insecure proxy listener")
    else:
        if route in PROXY_ROUTES and route != "/v1/ca":
            return error(404, f"{request.path} is served to proxies on the proxy listener (--proxy-listen)")
        ident = request.app.get(IDENTITY)
        if ident is not None:
            request[OPERATOR_KEY] = authenticate(request, ident.trust_domain)
    return await handler(request)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- operator


async def add_host(request: web.Request) -> web.Response:
    req: AddHostReq = await decode(request, AddHostReq)
    out = await _identity(request).add_host(request.app[STORE], req.name, req.services, req.ttl_s, req.address)
    return json_response(out)


async def list_hosts(request: web.Request) -> web.Response:
    return json_response(await _identity(request).list_hosts(request.app[STORE]))


async def remove_host(request: web.Request) -> web.Response:
    return json_response(await _identity(request).remove_host(request.app[STORE], request.match_info["name"]))


# --------------------------------------------------------------------------- proxies


async def ca_bundle(request: web.Request) -> web.Response:
    ident = _identity(request)
    return json_response({"trust_domain": ident.trust_domain, "ca_pem": ident.ca_pem, "ca_sha256": ident.ca_sha256})


async def join(request: web.Request) -> web.Response:
    req: JoinReq = await decode(request, JoinReq)
    return json_response(await _identity(request).join(request.app[STORE], req.token, req.csr_pem))


async def certs(request: web.Request) -> web.Response:
    host = await authorize(request)
    req: CertReq = await decode(request, CertReq)
    return json_response(await _identity(request).issue_service(request.app[STORE], host, req.service, req.csr_pem))


async def renew(request: web.Request) -> web.Response:
    host = await authorize(request)
    req: RenewReq = await decode(request, RenewReq)
    return json_response(await _identity(request).renew_host(request.app[STORE], host, req.csr_pem))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/hosts", add_host)
    app.router.add_get("/v1/hosts", list_hosts)
    app.router.add_delete("/v1/hosts/{name}", remove_host)
    app.router.add_get("/v1/ca", ca_bundle)
    app.router.add_post("/v1/join", join)
    app.router.add_post("/v1/hosts/{host}/certs", certs)
    app.router.add_post("/v1/hosts/{host}/renew", renew)


__all__ = ["Forbidden", "add_routes", "authorize", "listener_guard"]
