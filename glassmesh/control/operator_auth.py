"""Who calls the operator API, and what they may do: an operator certificate from the mesh CA, by role.

The operator listener (`--listen`, default 127.0.0.1:4200) speaks TLS only.
A caller proves who it is with a client certificate from the mesh CA whose
SPIFFE ID is `spiffe://<td>/operator/<name>` and whose subject organization
names its role, `glassmesh:admin` or `glassmesh:read-only` (see
api/certs.py). Without one the answer is 401; with a certificate that is not
an operator's (a host's, a service's) or a read-only one asking to change
something, 403. Nothing is changed by a refused call, and what is recorded
as the author of a change is the credential's name, never a field the
client sends.

The handshake itself asks for a certificate but does not require one, so a
caller without one gets a readable 401 that says what to do instead of a
bare TLS alert.

A browser holds no certificate: it calls with the dashboard's session cookie
instead (sessions.py), which makes it a read-only operator of the name that
asked for the login, for GET and HEAD only, whatever that operator's role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from glassmesh.api.certs import role_of
from glassmesh.control.sessions import KEY_HEADER, SESSIONS, cookie_name

OPERATOR_KEY = "glassmesh_operator"  # request[OPERATOR_KEY]: the Operator who made the call
READ_METHODS = frozenset({"GET", "HEAD"})
# POSTs a read-only operator may make: minting a login for the read-only dashboard gives a browser
# nothing its certificate does not (control/dashboard.py refuses it to a session).
READ_ONLY_POSTS = frozenset({"/v1/dashboard/login"})


@dataclass(frozen=True)
class Operator:
    name: str
    role: str
    spiffe_id: str
    via: str = "certificate"  # or "session": a browser's dashboard cookie


def _refuse(status: int, message: str) -> web.HTTPException:
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    return cls(body=msgspec.json.encode({"error": message}), content_type="application/json")


def authenticate(request: web.Request, trust_domain: str) -> Operator:
    """The operator behind this request, allowed to do what it asks; 401 or 403 (raised) otherwise."""
    t = request.transport
    if t is None or t.get_extra_info("sslcontext") is None:
        raise _refuse(401, "the operator API speaks TLS only: call it with https:// and an operator credential")
    cert: dict[str, Any] | None = t.get_extra_info("peercert")
    if not cert:
        session = _session(request)
        if session is not None:
            return session
        raise _refuse(401, "no operator credential: present an operator certificate from the mesh CA "
                           "(glassmesh --credential FILE, GLASSMESH_CREDENTIAL, or ~/.config/glassmesh/operator.pem); "
                           "in a browser, open the link `glassmesh dashboard` prints")
    spiffe = next((v for k, v in cert.get("subjectAltName", ()) if k == "URI" and v.startswith("spiffe://")), "")
    prefix = f"spiffe://{trust_domain}/operator/"
    name = spiffe[len(prefix):] if spiffe.startswith(prefix) else ""
    role = role_of(cert.get("subject"))
    if not name or "/" in name or role is None:
        raise _refuse(403, f"the client certificate ({spiffe or 'no SPIFFE ID'}) is not an operator credential")
    op = Operator(name, role, spiffe)
    route = request.match_info.route.resource
    read_only_post = route is not None and route.canonical in READ_ONLY_POSTS and request.method == "POST"
    if role != "admin" and request.method not in READ_METHODS and not read_only_post:
        raise _refuse(403, f"operator {name!r} is {role}: {request.method} {request.path} needs the admin role")
    return op


def _session(request: web.Request) -> Operator | None:
    """The read-only operator behind a dashboard session cookie; 403 (raised) for a change; None without one."""
    sessions = request.app.get(SESSIONS)
    cookie = request.cookies.get(cookie_name(local_port(request)), "")
    login = sessions.lookup(cookie, request.headers.get(KEY_HEADER, "")) if sessions is not None else None
    if login is None:
        return None
    if request.method not in READ_METHODS:
        raise _refuse(403, f"the dashboard's session is read-only: {request.method} {request.path} needs an "
                           f"operator credential")
    return Operator(login.operator, "read-only", login.spiffe_id, via="session")


def local_port(request: web.Request) -> int | None:
    """The port of the listener the request came in on (the dashboard's cookie is named for it)."""
    t = request.transport
    sockname = t.get_extra_info("sockname") if t is not None else None
    return int(sockname[1]) if isinstance(sockname, tuple) and len(sockname) > 1 else None


def author(request: web.Request) -> str:
    """Who a change is recorded as: the authenticated operator (an `author` the client sends is ignored)."""
    op: Operator | None = request.get(OPERATOR_KEY)
    return op.name if op is not None else "unknown"
