"""Who may see the dashboard: attacks on its login link and its session, against a real control plane.

A browser holds no client certificate: it comes in with the link `glassmesh
dashboard` prints (one-minute, single-use token) and leaves with a session:
a cookie, and a key its page sends in a header. Here a client that presents
no certificate, as a browser does, tries the link twice, calls the data
routes with no session, a made-up one, the token itself, the cookie without
its key (what a server on another port of the host would be sent) or the
key without its cookie, uses a session to change the mesh or to mint itself
a new login, and redeems a token on the plain proxy listener; each is
refused and nothing changes.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import glassmesh.dashboard
from tests.e2e.test_control_plane import CLI, MESH, Control

DATA_ROUTES = ["/v1/status", "/v1/config", "/v1/hosts", "/v1/history", "/metrics"]


def _browser(c: Control, method: str, path: str, session: dict[str, str] | None = None, body: Any = None,
             base: str = "") -> tuple[int, dict[str, str], bytes]:
    """What a browser sends: TLS without a client certificate (it trusts the mesh CA here), maybe a session
    (its cookie, and the key the page sends in a header)."""
    url = base or c.url
    host, port = url.split("//")[1].rsplit(":", 1)
    if url.startswith("https"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(c.cred.parent / "ca" / "ca.pem"))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = dict(session or {})
    if body is not None:
        headers["content-type"] = "application/json"
    try:
        conn.request(method, path, None if body is None else json.dumps(body).encode(), headers)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _login_path(c: Control, cred: Path | None = None) -> str:
    """The path of the link `glassmesh dashboard --no-open` prints."""
    r = c.cli("dashboard", "--no-open", *(["--credential", str(cred)] if cred else []))
    assert r.returncode == 0, r.stderr
    m = re.search(r"dashboard: (https://\S+)", r.stdout)
    assert m and m.group(1).startswith(c.url + "/dashboard/login?token="), r.stdout
    assert "single use" in r.stdout and "SHA-256" in r.stdout, r.stdout
    return m.group(1)[len(c.url):]


def _session(c: Control, cred: Path | None = None) -> dict[str, str]:
    """The headers a logged-in page sends: the cookie the link gave, and the key it handed the page."""
    status, headers, body = _browser(c, "GET", _login_path(c, cred))
    assert status == 200, status
    return {"cookie": _cookie(c, headers["set-cookie"]), "glassmesh-session-key": _key(body)}


def _cookie(c: Control, set_cookie: str) -> str:
    name = f"glassmesh_dashboard_{c.url.rsplit(':', 1)[1]}"  # named for the listener's port
    return f"{name}={SimpleCookie(set_cookie)[name].value}"


def _key(body: bytes) -> str:
    """The session's key, from the page the login answers (it moves on to /dashboard/#key=KEY)."""
    m = re.search(rb"/dashboard/#key=([A-Za-z0-9_-]+)", body)
    assert m, body
    return m.group(1).decode()


def _version(c: Control) -> int:
    st, cfg = c.api("GET", "/v1/config")
    assert st == 200
    return int(cfg["version"])


def test_the_link_works_once_and_gives_a_strict_cookie(control: Control) -> None:
    path = _login_path(control)
    status, headers, body = _browser(control, "GET", path)
    assert status == 200, body
    cookie = headers["set-cookie"]
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"httponly", "secure", "samesite", "max-age", "path"} <= attrs, cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie, cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= 8 * 3600, cookie
    assert headers["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in headers[
        "content-security-policy"]
    session = {"cookie": _cookie(control, cookie), "glassmesh-session-key": _key(body)}
    status, _, body = _browser(control, "GET", "/v1/status", session)
    assert status == 200 and json.loads(body)["config_version"] == 1
    status, headers, body = _browser(control, "GET", "/dashboard/", session)
    assert status == 200 and b"/dashboard/app.js" in body and "script-src 'self'" in headers[
        "content-security-policy"]

    # The same link again, at once: refused, and no cookie.
    status, headers, body = _browser(control, "GET", path)
    assert status == 403 and "set-cookie" not in headers, (status, headers)
    assert b"glassmesh dashboard" in body  # it says how to get a new one


def test_data_routes_refuse_a_browser_without_a_session(control: Control) -> None:
    token = _login_path(control).split("token=")[1]
    real = _session(control)
    cookie, key = real["cookie"], real["glassmesh-session-key"]
    name = cookie.split("=")[0]
    for session in [{}, {"cookie": f"{name}=made-up", "glassmesh-session-key": key},
                    {"cookie": f"{name}={token}", "glassmesh-session-key": token},
                    {"cookie": cookie},  # what a server on another port of this host is sent: no key
                    {"cookie": cookie, "glassmesh-session-key": "made-up"},
                    {"glassmesh-session-key": key},
                    {"cookie": f"glassmesh_dashboard_1={cookie.split('=', 1)[1]}", "glassmesh-session-key": key}]:
        for path in DATA_ROUTES:
            status, headers, body = _browser(control, "GET", path, session)
            assert status == 401, (session, path, status, body[:200])
            assert "glassmesh dashboard" in json.loads(body)["error"]
    assert _browser(control, "GET", "/v1/status", real)[0] == 200
    # The page itself is open, and the same static file for everyone: it holds nothing but code.
    status, headers, body = _browser(control, "GET", "/dashboard/app.js")
    assert status == 200 and body == (Path(glassmesh.dashboard.__file__).parent / "app.js").read_bytes()
    assert _browser(control, "GET", "/dashboard/../v1/status")[0] in (401, 404)
    # The token was never traded, so it still works once (a cookie is not a token).
    assert _browser(control, "GET", f"/dashboard/login?token={token}")[0] == 200


def test_a_session_changes_nothing_and_cannot_renew_itself(control: Control) -> None:
    session = _session(control)  # an admin asked for it: the session is read-only all the same
    before = _version(control)
    for method, path, body in [("POST", "/v1/apply", {"yaml": MESH.replace("8080", "9999")}),
                               ("POST", "/v1/rollback", {"version": 1}),
                               ("POST", "/v1/hosts", {"name": "evil", "services": ["b"]}),
                               ("POST", "/v1/drain", {"service": "b"}),
                               ("DELETE", "/v1/hosts/host1", None)]:
        status, _, out = _browser(control, method, path, session, body)
        assert status == 403 and "read-only" in json.loads(out)["error"], (path, status, out)
    status, _, out = _browser(control, "POST", "/v1/dashboard/login", session, {})
    assert status == 403, out
    assert _version(control) == before


def test_a_read_only_operator_may_open_it(control: Control, tmp_path: Path) -> None:
    viewer = tmp_path / "viewer.pem"
    r = subprocess.run([*CLI, "ca", "issue", "--dir", str(control.cred.parent / "ca"), "--operator", "viewer",
                        "--role", "read-only", "--out", str(viewer)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    session = _session(control, viewer)
    assert _browser(control, "GET", "/v1/status", session)[0] == 200
    assert _browser(control, "POST", "/v1/apply", session, {"yaml": MESH})[0] == 403


def test_a_token_is_not_taken_on_the_plain_proxy_listener(control: Control) -> None:
    path = _login_path(control)
    status, headers, _ = _browser(control, "GET", path, base=control.insecure)
    assert status == 404 and "set-cookie" not in headers
    assert _browser(control, "GET", path)[0] == 200  # untouched: it still opens the dashboard, once


def test_log_out_takes_the_cookie_and_its_key(control: Control) -> None:
    session = _session(control)
    # What a forged cross-site request could at most carry (were the cookie sent): not enough to log out.
    status, _, body = _browser(control, "POST", "/dashboard/logout", {"cookie": session["cookie"]})
    assert status == 200 and json.loads(body) == {"ended": False}
    assert _browser(control, "GET", "/v1/status", session)[0] == 200
    status, headers, body = _browser(control, "POST", "/dashboard/logout", session)
    assert status == 200 and json.loads(body) == {"ended": True}
    assert "Max-Age=0" in headers["set-cookie"] or "expires=Thu, 01 Jan 1970" in headers["set-cookie"]
    assert _browser(control, "GET", "/v1/status", session)[0] == 401
