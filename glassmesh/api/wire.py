"""The proxy-facing control-plane API as the proxy speaks it: paths, headers and JSON bodies.

    GET  /v1/hosts/{host}/snapshot?after=N&wait=S  -> 200 snapshot JSON (+ VERSION_HEADER) or 204
    POST /v1/hosts/{host}/ack        Ack
    POST /v1/hosts/{host}/instances  Report

The structs match glassmesh.control.proxy_api field for field (decoded there
strictly, so a misspelt field is a 400, never silently dropped).
"""

from __future__ import annotations

from urllib.parse import quote

import msgspec

from glassmesh.model.snapshot import Address

VERSION_HEADER = "glassmesh-snapshot-version"
_S = {"forbid_unknown_fields": True, "kw_only": True}


class Ack(msgspec.Struct, **_S):
    """A proxy's answer to one snapshot version: accepted (maybe with a warning in reason) or rejected."""

    version: int
    accepted: bool
    reason: str = ""


class Reported(msgspec.Struct, **_S):
    """One local instance and the result of the proxy's own health check of it."""

    service: str
    address: Address
    healthy: bool
    detail: str = ""


class Report(msgspec.Struct, **_S):
    """Every instance a proxy fronts; the control plane expires them after ttl_s without a new report."""

    instances: list[Reported]
    ttl_s: float = 15.0


def snapshot_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/snapshot"


def ack_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/ack"


def instances_path(host: str) -> str:
    return f"/v1/hosts/{quote(host, safe='')}/instances"
