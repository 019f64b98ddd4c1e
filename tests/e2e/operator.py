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
