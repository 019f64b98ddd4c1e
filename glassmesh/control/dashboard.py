"""The dashboard's HTTP side: login links for operators, the session cookie, and the page itself.

It is served on the operator listener only (`--listen`, TLS, loopback by
default), beside the operator API, and reads nothing but that API: the page
calls `/v1/status`, `/v1/hosts`, `/v1/config`, `/v1/links` and `/v1/tap` with
its session cookie, which operator_auth.py takes as a read-only operator.

- `POST /v1/dashboard/login` (an operator certificate, either role; never a
  session, so a session cannot renew itself): a single-use login path, good
  for a minute (sessions.py).
- `GET /dashboard/login?token=T` (the only route open without a credential):
  trades the token for the session: the cookie, HttpOnly, SameSite=Strict,
  Secure over TLS, with a bounded Max-Age, and its key, in the fragment of the
  same-site navigation on to the page, which keeps it in localStorage and
  sends it with every call (sessions.py says why both). A used, unknown or
  expired token is a 403 page that says how to get another.
- `POST /dashboard/logout`: ends the session its cookie and key name (the page's
  "log out"; a forged cross-site request carries neither).
- `GET /dashboard/` and its files: the page (package data in glassmesh/dashboard),
  the same static files for anyone who reaches the listener: it holds no data,
  and says how to log in when its calls are refused.

No route the page uses changes anything, and the session refuses every
method but GET and HEAD, so there is nothing for a forged cross-site request
to do; the strict SameSite cookie is not even sent with one. Every answer
forbids framing and loading anything from another origin (CSP).
"""

from __future__ import annotations

import html
import importlib.resources
import ssl
import time

from aiohttp import web

from glassmesh.control.api import error, json_response
from glassmesh.control.operator_auth import OPERATOR_KEY, Operator, local_port
from glassmesh.control.sessions import KEY_HEADER, LOGIN_PATH, SESSIONS, Sessions, cookie_name

PAGE = "/dashboard/"
# The page's files, by name: nothing else under /dashboard/ is served (no path from the request reaches the disk).
FILES = {"app.js": "application/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # the login URL carries the token: never send it on
    "cache-control": "no-store",
}


def _asset(name: str) -> bytes:
    return importlib.resources.files("glassmesh.dashboard").joinpath(name).read_bytes()


def _page(status: int, body: bytes, content_type: str = "text/html") -> web.Response:
    return web.Response(status=status, body=body, content_type=content_type, charset="utf-8",
                        headers=SECURITY_HEADERS)


def _message(status: int, title: str, text: str, refresh: str = "") -> web.Response:
    meta = f'<meta http-equiv="refresh" content="0;url={html.escape(refresh)}">' if refresh else ""
    link = f'<p><a href="{html.escape(refresh)}">Open the dashboard</a></p>' if refresh else ""
    doc = (f"<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'>{meta}<title>glassmesh: {html.escape(title)}</title>"
           f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{link}</body></html>")
    return _page(status, doc.encode())


def _credential_expiry(request: web.Request) -> float | None:
    t = request.transport
    cert = t.get_extra_info("peercert") if t is not None else None
    try:
        return float(ssl.cert_time_to_seconds(cert["notAfter"])) if cert else None
    except (KeyError, ValueError):
        return None


async def mint(request: web.Request) -> web.Response:
    """A login path for one browser: the operator's certificate vouches for it; a session cannot."""
    op: Operator | None = request.get(OPERATOR_KEY)
    if op is not None and op.via != "certificate":
        return error(403, "a dashboard session cannot open another: run `glassmesh dashboard` with an operator "
                          "credential")
    name, spiffe = (op.name, op.spiffe_id) if op is not None else ("unknown", "")
    token, ttl = request.app[SESSIONS].mint(name, spiffe, _credential_expiry(request))
    return json_response({"path": f"{LOGIN_PATH}?token={token}", "expires_in_s": ttl, "operator": name,
                          "single_use": True})


async def login(request: web.Request) -> web.Response:
    """Trade a login token (once) for the session cookie, and go on to the page."""
    got = request.app[SESSIONS].redeem(request.query.get("token", ""))
    if got is None:
        return _message(403, "This login link cannot be used",
                        "It was used already, has expired (links are good for a minute), or is not one this "
                        "control plane gave out. Run `glassmesh dashboard` for a new one.")
    sid, key, who = got
    # The key rides in the fragment, which no browser sends anywhere; the page moves it to localStorage.
    resp = _message(200, "Logged in", f"Signed in as operator {who.operator} (read-only).",
                    refresh=f"{PAGE}#key={key}")
    secure = request.transport is not None and request.transport.get_extra_info("sslcontext") is not None
    resp.set_cookie(cookie_name(local_port(request)), sid, max_age=max(1, int(who.expires - time.time())), path="/", httponly=True,
                    samesite="Strict", secure=secure)
    return resp


async def logout(request: web.Request) -> web.Response:
    """End this browser's session (its cookie and key, as for any call) and drop the cookie."""
    name = cookie_name(local_port(request))
    ended = request.app[SESSIONS].end(request.cookies.get(name, ""), request.headers.get(KEY_HEADER, ""))
    resp = json_response({"ended": ended})
    resp.del_cookie(name, path="/")
    return resp


async def page(request: web.Request) -> web.Response:
    return _page(200, _asset("index.html"))


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES:
        return _page(404, b"not found", "text/plain")
    return _page(200, _asset(name), FILES[name])


async def bare(request: web.Request) -> web.Response:
    raise web.HTTPFound(PAGE, headers=SECURITY_HEADERS)


def add_routes(app: web.Application) -> None:
    app[SESSIONS] = Sessions()
    app.router.add_post("/v1/dashboard/login", mint)
    app.router.add_get(LOGIN_PATH, login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard", bare)
    app.router.add_get(PAGE, page)
    app.router.add_get("/dashboard/{name}", asset)
