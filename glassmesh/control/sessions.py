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
- only SHA-256 digests of tokens and session ids are kept, and both tables
  are bounded, so a client minting logins in a loop grows nothing without end.

Pure bookkeeping with an injectable clock; control/dashboard.py is its HTTP side.
"""

from __future__ import annotations

import hashlib
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
COOKIE = "glassmesh_dashboard"
# The one route a browser reaches without a session or a certificate: it trades the token itself.
LOGIN_PATH = "/dashboard/login"


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
        self._sessions: OrderedDict[str, Login] = OrderedDict()

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

    def redeem(self, token: str) -> tuple[str, Login] | None:
        """(session id, login) for a token used for the first time within its minute; None otherwise.

        The token is gone after this call whatever the answer, so it can never be traded twice.
        """
        now = self._clock()
        entry = self._tokens.pop(_digest(token), None)
        if entry is None or now - entry[0] > TOKEN_TTL_S or entry[1].expires <= now:
            return None
        login = entry[1]
        for key in [k for k, v in self._sessions.items() if v.expires <= now]:
            del self._sessions[key]
        sid = secrets.token_urlsafe(32)
        self._sessions[_digest(sid)] = login
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)  # the oldest first
        return sid, login

    def lookup(self, session_id: str) -> Login | None:
        """The login behind a session cookie while it lasts; None for an unknown or ended one."""
        if not session_id:
            return None
        key = _digest(session_id)
        login = self._sessions.get(key)
        if login is None:
            return None
        if login.expires <= self._clock():
            del self._sessions[key]
            return None
        return login


SESSIONS = web.AppKey("dashboard_sessions", Sessions)
