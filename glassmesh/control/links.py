"""`GET /v1/links`: the mesh's link matrix, from every connected proxy's counters, as rates.

Each proxy counts per link (side, source service, destination service) since
it started: requests by status class, a latency histogram, the TLS version,
retries and mesh errors (proxy/stats.py). The control plane asks each
connected host's proxy for them over the ask channel (the `links` ask, every
serving process summed) and turns two samples into rates. It keeps each
host's recent samples in memory, so that a caller polling every few seconds
(`glassmesh links --watch`, the dashboard) gets rates over its own interval
with one ask per host per poll; a host with no sample at least MIN_WINDOW_S
old is asked again after that long.

What is attributed how (the counters decide it): a link's requests, success,
latency and TLS come from the caller's outbound proxy (the inbound side's
when only that is seen); retries and mesh errors are counted per proxy and
side (a hop, `host2/inbound`), and per destination for retries; a hop that
carries several links gives its counts to the busiest of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from aiohttp import web

from glassmesh.control.api import PLANE, error, json_response
from glassmesh.control.asks import ASKS, AskError
from glassmesh.proxy.linkstats import BUCKETS

MIN_WINDOW_S = 1.0  # the shortest interval a rate is taken over
MAX_AGE_S = 60.0  # a sample older than this is not a base (the rate would hide what happens now)
KEPT = 4  # samples kept per host

Sample = dict[str, Any]  # {"at": unix time, "stats": a proxy's merged stats dump}
LinkKey = tuple[str, str]  # (source service, destination service)


def percentile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (seconds) of a histogram over linkstats.BUCKETS (+Inf last), interpolated as Prometheus
    does; the last finite bound for what falls in +Inf; None without observations."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(BUCKETS):
                return BUCKETS[-1]
            lo = BUCKETS[i - 1] if i else 0.0
            return lo + (BUCKETS[i] - lo) * ((rank - seen) / n)
        seen += n
    return BUCKETS[-1]


def _minus(cur: list[int], base: list[int] | None) -> list[int]:
    return list(cur) if base is None else [a - b for a, b in zip(cur, base, strict=True)]


def _host_links(cur: Sample, base: Sample | None) -> tuple[dict[tuple[str, str, str], dict[str, Any]], float | None]:
    """(side, source, destination) -> this host's deltas since base (since start when base is None or the
    proxy restarted since), and the window in seconds (None: since start)."""
    old = {(ls["side"], ls["source"], ls["destination"]): ls for ls in base["stats"]["links"]} if base else {}
    window = cur["at"] - base["at"] if base else None
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    links = cur["stats"]["links"]
    # A proxy that restarted counts from zero again: its counters went down, so the base is no base.
    if base is not None and any(sum(ls["status"]) < sum(old[k]["status"]) for ls in links
                                if (k := (ls["side"], ls["source"], ls["destination"])) in old):
        old, window = {}, None
    tcp = {tuple(k) for k in cur["stats"].get("tcp_links", ())}
    for ls in links:
        key = (ls["side"], ls["source"], ls["destination"])
        b = old.get(key)
        out[key] = {"status": _minus(ls["status"], b["status"] if b else None),
                    "buckets": _minus(ls["buckets"], b["buckets"] if b else None),
                    "tcp_conns": ls["tcp_conns"] - (b["tcp_conns"] if b else 0),
                    "tls": ls["tls_version"], "tcp": key in tcp}
    return out, window


def _counted(entries: list[list[Any]], base: list[list[Any]] | None, width: int) -> dict[tuple[Any, ...], int]:
    """[*key, n] rows (key `width` long) as key -> n minus the base's."""
    old = {tuple(e[:width]): e[-1] for e in base or ()}
    return {tuple(e[:width]): e[-1] - old.get(tuple(e[:width]), 0) for e in entries if len(e) == width + 1}


def _busiest(rows: dict[LinkKey, dict[str, Any]], deltas: dict[tuple[str, str, str], dict[str, Any]],
             keys: list[tuple[str, str, str]], destination: str | None = None) -> dict[str, Any] | None:
    """The row of the link that carried the most on one hop (to `destination`, when given)."""
    keys = [k for k in keys if destination is None or k[2] == destination]
    if not keys:
        return None
    k = max(keys, key=lambda k: (sum(deltas[k]["status"]) + deltas[k]["tcp_conns"], k))
    return rows[(k[1], k[2])]


def matrix(samples: dict[str, tuple[Sample, Sample | None]]) -> list[dict[str, Any]]:
    """The link rows, worst first, from each host's (current sample, base sample or None)."""
    rows: dict[LinkKey, dict[str, Any]] = {}
    for host, (cur, base) in sorted(samples.items()):
        deltas, window = _host_links(cur, base)
        by_hop: dict[str, list[tuple[str, str, str]]] = {}
        for key, d in deltas.items():
            side, src, dst = key
            by_hop.setdefault(side, []).append(key)
            r = rows.setdefault((src, dst), {
                "source": src, "destination": dst, "protocol": "tcp" if d["tcp"] else "http",
                "window_s": window, "requests": 0, "rate_rps": None, "status": [0] * 6, "buckets": [0] * len(d["buckets"]),
                "connections": 0, "mtls": "", "retries": {}, "mesh_errors": {}, "seen_at": [], "_side": side})
            r["mtls"] = r["mtls"] or d["tls"]
            r["seen_at"].append(f"{host}/{side}")
            # Requests and latency from the caller's side; the inbound side's only while no outbound is seen.
            if side == "outbound" and r["_side"] != "outbound":
                r.update(_side="outbound", requests=0, rate_rps=None, status=[0] * 6, buckets=[0] * len(d["buckets"]),
                         connections=0)
            if side != r["_side"]:
                continue
            n = sum(d["status"])
            r["requests"] += n
            r["status"] = [a + b for a, b in zip(r["status"], d["status"], strict=True)]
            r["buckets"] = [a + b for a, b in zip(r["buckets"], d["buckets"], strict=True)]
            r["connections"] += d["tcp_conns"]
            if window:
                count = d["tcp_conns"] if d["tcp"] else n
                r["rate_rps"] = (r["rate_rps"] or 0.0) + count / window
                r["window_s"] = window

        stats, bstats = cur["stats"], (base["stats"] if base and window is not None else None)
        for (side, dst, reason), n in _counted(stats.get("retries", []), bstats and bstats.get("retries"), 3).items():
            r = _busiest(rows, deltas, by_hop.get(side, []), dst)
            if r is not None and n > 0:
                r["retries"][reason] = r["retries"].get(reason, 0) + n
        errors = stats.get("errors", [])
        old_errors = bstats and bstats.get("errors")
        for key, n in [*_counted(errors, old_errors, 2).items(), *_counted(errors, old_errors, 4).items()]:
            if n <= 0:
                continue
            side, reason = key[0], key[-1]
            r = rows.get((key[1], key[2])) if len(key) == 4 else _busiest(rows, deltas, by_hop.get(side, []))
            if r is not None:
                hop = r["mesh_errors"].setdefault(f"{host}/{side}", {})
                hop[reason] = hop.get(reason, 0) + n
    out = []
    for r in rows.values():
        st = r.pop("status")
        b = r.pop("buckets")
        del r["_side"]
        n = sum(st)
        r["status"] = {f"{i}xx": st[i] for i in range(1, 6) if st[i]}
        r["success"] = None if n == 0 or r["protocol"] == "tcp" else round(1 - st[5] / n, 4)
        p50, p99 = percentile(b, 0.5), percentile(b, 0.99)
        r["p50_ms"] = None if p50 is None else round(p50 * 1000, 3)
        r["p99_ms"] = None if p99 is None else round(p99 * 1000, 3)
        if r["rate_rps"] is not None:
            r["rate_rps"] = round(r["rate_rps"], 3)
        out.append(r)
    return sorted(out, key=worst_first)


def worst_first(r: dict[str, Any]) -> tuple[Any, ...]:
    """Failing links first (lowest success), then the slowest (p99), then the busiest; idle links last."""
    idle = not r["requests"] and not r.get("connections")
    return (idle, r["success"] if r["success"] is not None else 1.0, -(r["p99_ms"] or 0.0), -(r["rate_rps"] or 0.0),
            r["source"], r["destination"])


class LinkSamples:
    """Each host's last few samples on this replica, to take rates against."""

    def __init__(self) -> None:
        self.kept: dict[str, deque[Sample]] = {}

    def add(self, host: str, sample: Sample) -> None:
        self.kept.setdefault(host, deque(maxlen=KEPT)).append(sample)

    def base(self, host: str, at: float) -> Sample | None:
        """The newest sample at least MIN_WINDOW_S before `at` and not older than MAX_AGE_S."""
        for s in reversed(self.kept.get(host, ())):
            if MIN_WINDOW_S <= at - s["at"] <= MAX_AGE_S:
                return s
        return None


SAMPLES = web.AppKey("link_samples", LinkSamples)


async def _sample(request: web.Request, host: str) -> Sample:
    events = await request.app[ASKS].ask(host, "links", {}, timeout_s=5.0)
    if not events:
        raise AskError(f"host {host}'s proxy gave no link counters")
    ev = events[0]
    return {"at": float(ev["at"]), "stats": ev["stats"]}


async def links(request: web.Request) -> web.Response:
    """Every connected host's link counters as rates; hosts that could not be asked are named with why."""
    asks, plane = request.app[ASKS], request.app[PLANE]
    store = request.app.get(SAMPLES)
    if store is None:
        return error(500, "link samples not set up")
    hosts = sorted(set(plane.snapshots) | asks.connected())
    missing: dict[str, str] = {}

    async def one(host: str) -> tuple[str, Sample | None]:
        try:
            return host, await _sample(request, host)
        except AskError as e:
            missing[host] = str(e)
            return host, None

    got = {h: s for h, s in await asyncio.gather(*(one(h) for h in hosts)) if s is not None}
    for h, s in got.items():
        store.add(h, s)
    pairs: dict[str, tuple[Sample, Sample | None]] = {}
    again = [h for h, s in got.items() if store.base(h, s["at"]) is None]
    if again:  # a first look: a second sample a moment later, for a rate
        await asyncio.sleep(MIN_WINDOW_S)
        for h, s in await asyncio.gather(*(one(h) for h in again)):
            if s is not None:
                store.add(h, s)
                got[h] = s
    for h, s in got.items():
        pairs[h] = (s, store.base(h, s["at"]))
    missing = {h: why for h, why in missing.items() if h not in got}
    return json_response({"at": time.time(), "hosts": sorted(got), "missing": missing, "links": matrix(pairs)})


def add_routes(app: web.Application) -> None:
    app[SAMPLES] = LinkSamples()
    app.router.add_get("/v1/links", links)
