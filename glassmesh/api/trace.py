"""`glassmesh trace`'s shared parts: which host minted an id, and a request's records as one timeline.

Where a trace starts. A proxy mints request and trace ids that begin with its
host's tag (8 hex digits of a hash of the host name; protocols/http1.py
set_origin). The control plane, which knows every host's name, finds the
host that minted an id by comparing tags: in a mesh of 200 hosts it asks one
proxy first, never all of them. An id an app made itself carries no tag; the
operator then names the caller's host (`--host`).

Which hosts follow. Each record of an outbound proxy names the host of the
endpoint it sent the request to (`next_host`); that host's proxy is asked
next, and so on while records name hosts not asked yet (bounded by MAX_HOPS).

The timeline (pure; the CLI prints it, tests read it): records in the order
the request crossed them, each with where its time went, the hop that made
the error if any, and the biggest share of the total.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MAX_HOPS = 16  # hosts asked for one trace at most: a path longer than this is a loop
_MINTED = re.compile(r"[0-9a-f]{24}|[0-9a-f]{32}")
ID_SHAPE = re.compile(r"[\x21-\x7e]{1,128}")  # what may be looked up at all: printable, no spaces, bounded


def host_tag(host: str) -> str:
    """The 8 hex digits that ids minted on `host` begin with."""
    return hashlib.sha256(b"glassmesh-origin:" + host.encode()).hexdigest()[:8]


def minted_tag(ident: str) -> str | None:
    """The host tag of a proxy-minted request id (24 hex digits) or trace id (32), else None."""
    return ident[:8] if _MINTED.fullmatch(ident) else None


def origin_hosts(ident: str, hosts: list[str]) -> list[str]:
    """The hosts whose tag the id carries (one, unless two host names collide on 32 bits)."""
    tag = minted_tag(ident)
    return [h for h in hosts if host_tag(h) == tag] if tag is not None else []


# --------------------------------------------------------------------------- the timeline

_SIDE_ORDER = {"outbound": 0, "inbound": 1}


def order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records in the order the request crossed them: by start time, an outbound before the inbound it sent to."""
    return sorted(records, key=lambda r: (r.get("start", 0.0), _SIDE_ORDER.get(r.get("side", ""), 2)))


def phases(rec: dict[str, Any]) -> list[tuple[str, float]]:
    """Where one hop's time went: (what, ms), in order, the parts that sum to its total."""
    total = float(rec.get("total_ms") or 0.0)
    before = rec.get("before_send_ms")
    waited = rec.get("upstream_head_ms")
    inbound = rec.get("side") == "inbound"
    out: list[tuple[str, float]] = []
    if before is None:
        return [("in the proxy", total)]
    out.append(("in the proxy (route, connect)" if not inbound else "in the proxy (connect to the app)", before))
    if waited is None:
        out.append(("waiting, no answer" if not rec.get("mesh_error") else "until the error", total - before))
        return out
    nxt = f"app {rec.get('destination')}" if inbound else f"next hop ({rec.get('next_host') or rec.get('endpoint')})"
    out.append((f"waiting on {nxt}", waited))
    out.append(("response body", max(0.0, total - before - waited)))
    return out


def error_hop(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Which hop made the request's error: the deepest proxy that made a mesh error, else the app that
    answered 5xx (the last inbound hop's app); None when the caller got no error (a try that failed and
    was made again elsewhere is listed by `retried`, not here)."""
    first = records[0] if records else {}
    if not first.get("mesh_error") and int(first.get("status") or 0) < 500:
        return None
    made = [r for r in records if r.get("mesh_error")]
    if made:
        r = made[-1]
        return {"hop": f"{r['host']}/{r['side']}", "reason": r["mesh_error"], "status": r.get("status"),
                "message": r.get("error_message", "")}
    failed = [r for r in records if int(r.get("status") or 0) >= 500]
    if failed:
        r = failed[-1]
        if r.get("side") == "inbound":
            return {"hop": f"app {r.get('destination')} on {r['host']}", "reason": "app", "status": r.get("status"),
                    "message": f"the app answered {r.get('status')}"}
        peer = r.get("peer_error")
        if peer:
            return {"hop": peer.partition("hop=")[2] or "next hop", "reason": peer.partition(";")[0],
                    "status": r.get("status"), "message": "named by the next hop's glassmesh-error"}
        return {"hop": f"next hop of {r['host']}/{r['side']}", "reason": "unknown", "status": r.get("status"),
                "message": "its records were not found"}
    return None


def timeline(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The hops in order, with each one's phases, offsets from the first, the error's hop and where time went."""
    recs = order(records)
    if not recs:
        return {"hops": [], "error": None, "slowest": None}
    t0 = recs[0].get("start", 0.0)
    hops = []
    for r in recs:
        hops.append({**r, "offset_ms": round((r.get("start", t0) - t0) * 1000, 3),
                     "phases": [[what, round(ms, 3)] for what, ms in phases(r)]})
    # The biggest single part: an app's own time is the inbound hop's wait on it; the network and
    # the next proxy's TLS are an outbound's wait less the next hop's total.
    parts: list[tuple[str, float]] = []
    for i, r in enumerate(recs):
        waited = r.get("upstream_head_ms")
        if waited is None:
            continue
        if r.get("side") == "inbound":
            parts.append((f"app {r.get('destination')} on {r['host']}", waited))
            continue
        nxt = next((x for x in recs[i + 1:] if x.get("side") == "inbound" and x.get("host") == r.get("next_host")),
                   None)
        if nxt is None:
            parts.append((f"next hop {r.get('next_host') or r.get('endpoint')}", waited))
        else:
            parts.append((f"network and TLS {r['host']} -> {nxt['host']}", max(0.0, waited - nxt["total_ms"])))
    total = float(recs[0].get("total_ms") or 0.0)
    for r in recs:
        own = float(r.get("before_send_ms") or 0.0)
        parts.append((f"proxy {r['host']}/{r['side']}", own))
    slowest = max(parts, key=lambda p: p[1]) if parts else None
    final = int(recs[0].get("status") or 0)
    retried = [f"{r['host']}/{r['side']}: {r.get('mesh_error') or r.get('status')}" for r in recs[1:]
               if r.get("mesh_error") or int(r.get("status") or 0) >= 500] if final < 500 else []
    return {
        "hops": hops,
        "error": error_hop(recs),
        "retried": retried,
        "total_ms": total,
        "slowest": {"what": slowest[0], "ms": round(slowest[1], 3),
                    "share": round(slowest[1] / total, 3) if total else 0.0} if slowest else None,
    }
