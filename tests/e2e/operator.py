"""Calling the control plane's operator API as an operator does: TLS, an operator credential, JSON.

The CLI does the same through glassmesh.cli._control_client; tests that call
the API directly (to check a status code or a raw document) use this.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from glassmesh.api import credential


def api(url: str, method: str, path: str, body: Any = None, cred: str | Path | None = None,
        timeout: float = 10) -> tuple[int, Any]:
    """(status, JSON body) of one call to the operator API at `url` (https://host:port) with `cred`."""
    parts = urllib.parse.urlsplit(url)
    c = credential.load(cred or os.environ[credential.ENV])
    conn = http.client.HTTPSConnection(parts.hostname or "127.0.0.1", parts.port or 443, timeout=timeout,
                                       context=c.client_context())
    try:
        conn.request(method, path, None if body is None else json.dumps(body).encode(),
                     {"content-type": "application/json"})
        c.expect_control(conn.sock.getpeercert())  # type: ignore[union-attr]
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, data.decode(errors="replace")
    finally:
        conn.close()


def cli_env(url: str, cred: str | Path) -> dict[str, str]:
    """The environment a test's `glassmesh` commands run with: this control plane, this credential."""
    return dict(os.environ, GLASSMESH_CONTROL=url, **{credential.ENV: str(cred)}, COLUMNS="200")
