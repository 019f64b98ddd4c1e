"""Calling the control plane's operator API as an operator does: TLS, an operator credential, JSON.

The CLI does the same through glassmesh.cli._control_client; tests that call
the API directly (to check a status code or a raw document) use this.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from glassmesh.api import credential


def api(url: str, method: str, path: str, body: Any = None, cred: str | Path | None = None,
        timeout: float = 10) -> tuple[int, Any]:
    """(status, JSON body, or text) of one call to the operator API at `url` (https://host:port) with `cred`."""
    status, data = credential.call(url, credential.load(cred or os.environ[credential.ENV]), method, path, body,
                                   timeout)
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode(errors="replace")


def cli_env(url: str, cred: str | Path) -> dict[str, str]:
    """The environment a test's `glassmesh` commands run with: this control plane, this credential."""
    return dict(os.environ, GLASSMESH_CONTROL=url, **{credential.ENV: str(cred)}, COLUMNS="200")


def get_without_operator(url: str, path: str, cert: tuple[Path, Path] | None = None) -> tuple[int, Any]:
    """(status, JSON body) of a GET to the operator API by a caller that is no operator: no client
    certificate at all, or `cert` (a certificate of another kind, e.g. a host's identity)."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    try:
        with urllib.request.urlopen(f"{url}{path}", timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
