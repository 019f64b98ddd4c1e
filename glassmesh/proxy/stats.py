"""Per-link counters kept as plain ints on the hot path, rendered by prometheus_client.

prometheus_client's own Counter/Histogram take a lock and a label lookup per
call, several microseconds per request across the series a request touches.
So the request path bumps attributes of a LinkStats object it already holds,
and a custom collector turns them into metric families at scrape time. Stats
are also dumped as plain data so that a supervisor can merge its workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from glassmesh import __version__
from glassmesh.buildinfo import hot_path
from glassmesh.proxy.linkstats import BUCKETS, LinkStats


class Stats:
    """All counters of one proxy process."""

    def __init__(self) -> None:
        self.links: dict[tuple[str, str, str], LinkStats] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.snapshot_version = 0
        self.client_conns = 0

    def link(self, side: str, source: str, destination: str) -> LinkStats:
        key = (side, source, destination)
        ls = self.links.get(key)
        if ls is None:
            ls = self.links[key] = LinkStats(side, source, destination)
        return ls

    def error(self, side: str, reason: str) -> None:
        key = (side, reason)
        self.errors[key] = self.errors.get(key, 0) + 1

    def dump(self) -> dict[str, Any]:
        return {
            "links": [ls.dump() for ls in self.links.values()],
            "errors": [[s, r, n] for (s, r), n in self.errors.items()],
            "snapshot_version": self.snapshot_version,
            "client_conns": self.client_conns,
        }


def merge(dumps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the dumps of several workers into one."""
    links: dict[tuple[str, str, str], dict[str, Any]] = {}
    errors: dict[tuple[str, str], int] = {}
    version = 0
    conns = 0
    for d in dumps:
        version = max(version, d["snapshot_version"])
        conns += d["client_conns"]
        for s, r, n in d["errors"]:
            errors[(s, r)] = errors.get((s, r), 0) + n
        for ls in d["links"]:
            key = (ls["side"], ls["source"], ls["destination"])
            cur = links.get(key)
            if cur is None:
                links[key] = {**ls, "status": list(ls["status"]), "buckets": list(ls["buckets"])}
                continue
            for f in ("dur_sum", "bytes_req", "bytes_resp", "open_conns", "handshakes", "tcp_conns"):
                cur[f] += ls[f]
            cur["status"] = [a + b for a, b in zip(cur["status"], ls["status"], strict=True)]
            cur["buckets"] = [a + b for a, b in zip(cur["buckets"], ls["buckets"], strict=True)]
            cur["tls_version"] = cur["tls_version"] or ls["tls_version"]
    return {
        "links": list(links.values()),
        "errors": [[s, r, n] for (s, r), n in errors.items()],
        "snapshot_version": version,
        "client_conns": conns,
    }


class _Collector:
    def __init__(self, dump: dict[str, Any]) -> None:
        self.d = dump

    def collect(self) -> Iterator[Any]:
        lk = ["side", "source", "destination"]
        req = CounterMetricFamily(
            "glassmesh_requests", "HTTP requests per link by status class", labels=[*lk, "status_class"]
        )
        dur = HistogramMetricFamily(
            "glassmesh_request_duration_seconds", "Time from request head in to response complete", labels=lk
        )
        byt = CounterMetricFamily("glassmesh_bytes", "Body bytes per link", labels=[*lk, "direction"])
        conns = GaugeMetricFamily("glassmesh_open_connections", "Open proxy-to-proxy connections", labels=lk)
        hs = CounterMetricFamily("glassmesh_tls_handshakes", "Completed mutual TLS handshakes", labels=lk)
        tcp = CounterMetricFamily("glassmesh_tcp_connections", "TCP link connections carried", labels=lk)
        mtls = GaugeMetricFamily(
            "glassmesh_link_mtls", "1 when the link's connections are mutual TLS", labels=[*lk, "tls_version"]
        )
        for ls in self.d["links"]:
            lv = [ls["side"], ls["source"], ls["destination"]]
            for i, n in enumerate(ls["status"]):
                if i and (n or i in (2, 5)):
                    req.add_metric([*lv, f"{i}xx"], n)
            if sum(ls["status"]):
                acc = 0
                bk = []
                for b, n in zip((*BUCKETS, float("inf")), ls["buckets"], strict=True):
                    acc += n
                    bk.append(("+Inf" if b == float("inf") else repr(b), acc))
                dur.add_metric(lv, bk, ls["dur_sum"])
            byt.add_metric([*lv, "request"], ls["bytes_req"])
            byt.add_metric([*lv, "response"], ls["bytes_resp"])
            conns.add_metric(lv, ls["open_conns"])
            hs.add_metric(lv, ls["handshakes"])
            if ls["tcp_conns"]:
                tcp.add_metric(lv, ls["tcp_conns"])
            if ls["tls_version"]:
                mtls.add_metric([*lv, ls["tls_version"]], 1)
        errs = CounterMetricFamily("glassmesh_mesh_errors", "Responses made by the mesh itself", labels=["side", "reason"])
        for s, r, n in self.d["errors"]:
            errs.add_metric([s, r], n)
        ver = GaugeMetricFamily("glassmesh_snapshot_version", "Version of the snapshot in force")
        ver.add_metric([], self.d["snapshot_version"])
        cc = GaugeMetricFamily("glassmesh_client_connections", "Open client connections on all listeners")
        cc.add_metric([], self.d["client_conns"])
        info = GaugeMetricFamily("glassmesh_build_info", "Version, and whether the hot path is mypyc-compiled",
                                 labels=["version", "hot_path"])
        info.add_metric([__version__, hot_path()], 1)
        yield from (req, dur, byt, conns, hs, tcp, mtls, errs, ver, cc, info)
        ctl = self.d.get("control")  # set by proxies that watch a control plane (glassmesh.proxy.watch)
        if ctl is not None:
            age = GaugeMetricFamily("glassmesh_snapshot_age_seconds",
                                    "Seconds since the snapshot in force was known current (0 while watching)")
            age.add_metric([], ctl["snapshot_age_seconds"])
            up = GaugeMetricFamily("glassmesh_control_plane_connected", "1 while the control-plane watch is connected")
            up.add_metric([], ctl["control_plane_connected"])
            yield from (age, up)
            updates = ctl.get("snapshot_updates")
            if updates is not None:
                upd = CounterMetricFamily("glassmesh_snapshot_updates",
                                          "Snapshots accepted from the control plane, by how they came",
                                          labels=["kind"])
                for kind in ("full", "delta"):
                    upd.add_metric([kind], updates.get(kind, 0))
                fb = CounterMetricFamily("glassmesh_snapshot_delta_fallbacks",
                                         "Deltas that did not fit the snapshot held, so the full one was asked for")
                fb.add_metric([], updates.get("delta_fallbacks", 0))
                yield from (upd, fb)


def render(dump: dict[str, Any]) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(dump))
    return generate_latest(reg)
