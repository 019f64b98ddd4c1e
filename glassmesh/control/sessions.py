"""Browser logins for the dashboard: single-use login tokens traded for a read-only session cookie.

A browser holds no client certificate, so an operator (who does) asks for a
login token (`glassmesh dashboard`), and the browser trades it once for a
session: an opaque random cookie. Both live only in this replica's memory:

- a token is good for TOKEN_TTL_S and for one trade; a second use, even
  within the minute, is refused, so a link seen later (shell history, a
  screenshot, the browser's own history) opens nothing;
- a session is read-only whatever the operator's role (the page changes
  nothing, so a forged cross-site request has nothing to do), ends after
  SESSION_TTL_S or when the operator's certificate expires, whichever comes
  first, and dies with the replica;
- a session is two secrets: the cookie (HttpOnly: no script reads it) and a
  key the page keeps in its origin's localStorage and sends in a header
  (KEY_HEADER). A cookie is sent to every port of the host (cookies know no
  ports), so a server another local user runs on 127.0.0.1:OTHER that the
  browser visits gets it; without the key, which only this origin's page
  holds, it opens nothing. The cookie's name carries the listener's port, so
  two control planes on one host do not log each other's browsers out;
- only SHA-256 digests of tokens, session ids and keys are kept, and both
  tables are bounded, so a client minting logins in a loop grows nothing
  without end.

Pure bookkeeping with an injectable clock; control/dashboard.py is its HTTP side.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

TOKEN_TTL_S = 60.0
SESSION_TTL_S = 8 * 3600.0  # a working day; `glassmesh dashboard` again for another
MAX_TOKENS = 256
MAX_SESSIONS = 1024
COOKIE = "glassmesh_dashboard"  # the cookie's name is this, "_", and the operator listener's port
KEY_HEADER = "glassmesh-session-key"
# The one route that takes a token: the browser reaches it without a session or a certificate.
LOGIN_PATH = "/dashboard/login"
# Routes open without a credential: the login, and the page's own files, the same for everyone (no data:
# the page reads everything it shows from the operator API, with its session). A navigation sends the
# cookie but never the key, so the page could not be behind the session anyway.
OPEN_ROUTES = frozenset({LOGIN_PATH, "/dashboard", "/dashboard/", "/dashboard/{name}", "/dashboard/logout"})


@dataclass(frozen=True)
class Login:
    """Whom a token or a session speaks for, and until when (Unix seconds)."""

    operator: str
    spiffe_id: str
    expires: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Sessions:
    """The tokens not yet traded and the sessions they became, for one replica."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._tokens: OrderedDict[str, tuple[float, Login]] = OrderedDict()  # digest -> (minted at, login)
        self._sessions: OrderedDict[str, tuple[str, Login]] = OrderedDict()  # digest -> (key's digest, login)

    def mint(self, operator: str, spiffe_id: str, credential_expires: float | None = None) -> tuple[str, float]:
        """A new single-use login token for `operator`, and how many seconds it is good for."""
        now = self._clock()
        until = now + SESSION_TTL_S
        if credential_expires is not None:
            until = min(until, credential_expires)  # a session never outlives the credential that opened it
        token = secrets.token_urlsafe(32)
        for key in [k for k, (at, _) in self._tokens.items() if now - at > TOKEN_TTL_S]:
            del self._tokens[key]
        self._tokens[_digest(token)] = (now, Login(operator, spiffe_id, until))
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)  # the oldest first
        return token, TOKEN_TTL_S

    def redeem(self, token: str) -> tuple[str, str, Login] | None:
        """(session id, session key, login) for a token used for the first time within its minute; None otherwise.

        The token is gone after this call whatever the answer, so it can never be traded twice.
        """
        now = self._clock()
        entry = self._tokens.pop(_digest(token), None)
        if entry is None or now - entry[0] > TOKEN_TTL_S or entry[1].expires <= now:
            return None
        login = entry[1]
        for k in [k for k, (_, v) in self._sessions.items() if v.expires <= now]:
            del self._sessions[k]
        sid, key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._sessions[_digest(sid)] = (_digest(key), login)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)  # the oldest first
        return sid, key, login

    def lookup(self, session_id: str, key: str) -> Login | None:
        """The login behind a session cookie and its key while it lasts; None for an unknown or ended one, or
        a key that is not the session's."""
        if not session_id or not key:
            return None
        d = _digest(session_id)
        entry = self._sessions.get(d)
        if entry is None or not hmac.compare_digest(entry[0], _digest(key)):
            return None
        if entry[1].expires <= self._clock():
            del self._sessions[d]
            return None
        return entry[1]

    def end(self, session_id: str, key: str) -> bool:
        """Log a session out (both its secrets are needed, as for a lookup); whether there was one."""
        if self.lookup(session_id, key) is None:
            return False
        del self._sessions[_digest(session_id)]
        return True


def cookie_name(port: int | None) -> str:
    return f"{COOKIE}_{port}" if port else COOKIE


SESSIONS = web.AppKey("dashboard_sessions", Sessions)
