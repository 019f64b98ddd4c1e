"""The demo as an operator: the admin credential the control plane wrote, its API calls, host joins.

The demo runs the mesh the way a real deployment does: it calls the
operator API with the admin credential (`DIR/admin.pem`, written by the
control plane on first start), and joins each host with a single-use token
(`host add`), so every proxy gets its own host identity and its services'
certificates by CSR. The credential is also put where the `glassmesh` CLI
looks by default, so that `glassmesh status` works while the demo runs,
unless a credential that the demo did not write is already there.
"""

from __future__ import annotations

import json
import os
from typing import Any

from glassmesh.api import credential
from glassmesh.files import private_dir, write_private

DEMO_MARK = "written by glassmesh demo"


class Operator:
    """Calls to the operator API at `url` with the credential in `path`."""

    def __init__(self, url: str, path: str) -> None:
        self.url, self.path = url, path
        self._cred: credential.Credential | None = None

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        """(status, decoded JSON or None); OSError, ssl.SSLError or CredentialError when it cannot be made."""
        if self._cred is None:
            self._cred = credential.load(self.path)
        status, raw = credential.call(self.url, self._cred, method, path, body, timeout)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, None

    def up(self) -> bool:
        """The API answers an authenticated status call (the credential exists by then)."""
        if not os.path.exists(self.path):
            return False
        try:
            return self.call("GET", "/v1/status", timeout=1.0)[0] == 200
        except (OSError, credential.CredentialError):
            return False

    def join_args(self, host: str, services: list[str], data_dir: str, proxy_url: str) -> list[str]:
        """`host add` for `host`, and the `glassmesh proxy` arguments that join it with the token."""
        status, doc = self.call("POST", "/v1/hosts", {"name": host, "services": services, "ttl_s": 600})
        if status != 200 or not doc:
            raise RuntimeError(f"host add {host}: HTTP {status}: {(doc or {}).get('error', 'no answer')}")
        return ["--control", proxy_url, "--join", doc["token"], "--ca-sha256", doc["ca_sha256"], "--data", data_dir]


def install_credential(src: str) -> str:
    """Put the demo's admin credential where the CLI looks by default; say where it is either way.

    A credential already there that the demo did not write (a real mesh's)
    is never replaced: the user is told to point GLASSMESH_CREDENTIAL at the
    demo's instead.
    """
    dst = credential.default_path()
    ours = False
    try:
        ours = DEMO_MARK in dst.read_text(errors="replace").split("-----BEGIN", 1)[0]
    except OSError:
        ours = not dst.exists()
    if not ours:
        return (f"operator credential: {src} (admin); {dst} holds another one, so run the CLI with "
                f"GLASSMESH_CREDENTIAL={src}")
    with open(src, "rb") as f:
        data = f.read()
    private_dir(dst.parent)
    write_private(dst, f"# {DEMO_MARK}: the demo's control plane, admin\n".encode() + data)
    return f"operator credential: {src} (admin), copied to {dst}, where `glassmesh` finds it"
