"""`glassmesh dashboard`: a one-minute, single-use login link to the control plane's dashboard.

A browser holds no client certificate, so this command (which has the
operator credential) asks the control plane for a login token and prints
the URL that carries it; the browser trades it for a read-only session
(control/dashboard.py). It opens the browser where one can be opened, and
never fails when none can: the URL is printed either way.

The page is served with the control plane's own certificate, from the mesh
CA, which the browser does not know; the command prints that certificate's
SHA-256 fingerprint (checked here against the mesh CA) so that the browser's
warning can be compared with it before going on.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import sys
import urllib.parse
import webbrowser

import click

from glassmesh.api.credential import CredentialError
from glassmesh.cli._control_client import (
    Unreachable,
    call,
    control_option,
    control_urls,
    expect_ok,
    operator_credential,
    out,
)


def _fingerprint(url: str) -> str:
    """The SHA-256 of the certificate the control plane at `url` serves, once it proved to be this mesh's."""
    cred = operator_credential()
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=10) as raw, \
                cred.client_context().wrap_socket(raw, server_hostname=parts.hostname) as tls:
            cred.expect_control(tls.getpeercert())
            der = tls.getpeercert(binary_form=True) or b""
    except (OSError, ssl.SSLError, ValueError, CredentialError):
        return ""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _can_open_browser() -> bool:
    """Whether a graphical browser can be started here (a text one would take over this terminal)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("BROWSER"))


@click.command()
@click.option("--no-open", is_flag=True, help="Print the link only; do not start a browser.")
@control_option
def dashboard(control: str, no_open: bool) -> None:
    """Open the control plane's dashboard: print (and open) a one-minute, single-use login link.

    The browser gets a read-only session (8 hours at most, never past this
    credential's expiry) on the replica that made the link.
    """
    answer: dict[str, object] | None = None
    used = ""
    errors: list[str] = []
    for base in control_urls(control):  # the token lives in one replica's memory: the link must name that one
        try:
            answer, used = expect_ok(*call(base, "POST", "/v1/dashboard/login", {})), base
            break
        except Unreachable as e:
            errors.append(e.message)
    if answer is None:
        raise Unreachable("; ".join(errors))
    url = used.rstrip("/") + str(answer["path"])
    out.print(f"dashboard: {url}", markup=False, highlight=False)
    out.print(f"  a login link for one browser: single use, good for {float(str(answer['expires_in_s'])):.0f} s "
              f"(run `glassmesh dashboard` again for another); it opens a read-only session as operator "
              f"{answer['operator']}", markup=False, highlight=False)
    fp = _fingerprint(used)
    if fp:
        out.print(f"  the browser does not know the mesh CA and warns once: the control plane's certificate is "
                  f"SHA-256 {fp}", markup=False, highlight=False)
    if no_open or not _can_open_browser():
        return
    try:
        opened = webbrowser.open(url, new=2)
    except Exception:  # a browser that cannot start is no failure: the link is printed above
        opened = False
    out.print("  opened in your browser" if opened else "  (no browser could be opened: open the link yourself)",
              markup=False, highlight=False)
