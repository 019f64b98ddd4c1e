"""Per-link counters kept as plain ints on the hot path, rendered by prometheus_client.

prometheus_client's own Counter/Histogram take a lock and a label lookup per
call, several microseconds per request across the series a request touches.
So the request path bumps attributes of a LinkStats object it already holds,
and a custom collector turns them into metric families at scrape time. Stats
are also dumped as plain data so that a supervisor can merge its workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from glassmesh import __version__
from glassmesh.buildinfo import hot_path
from glassmesh.proxy.linkstats import BUCKETS, LinkStats
from glassmesh.proxy.process import merge_process, process_families, process_sample


class Stats:
    """All counters of one proxy process."""

    def __init__(self) -> None:
        self.host = ""  # this proxy's host name (Runtime.apply): the hop of the errors it makes
        self.links: dict[tuple[str, str, str], LinkStats] = {}
        # (side, source, destination, reason, hop): responses made by the mesh that this proxy sent to
        # its client, made here or (outbound) by the peer's inbound named by hop and passed on.
        self.errors: dict[tuple[str, str, str, str, str], int] = {}
        self.retries: dict[tuple[str, str, str, str], int] = {}  # (side, source, destination, reason): tries made again
        # The runtime's view of each endpoint (Runtime.endpoint_rows), read at scrape time only.
        self.endpoint_rows: Callable[[], list[dict[str, Any]]] | None = None
        self.snapshot_version = 0
        self.client_conns = 0
        # tcp links: which links carry tcp (they have no requests), their open client connections,
        # and the connections that could not be delivered, by reason.
        self.tcp: set[tuple[str, str, str]] = set()
        self.tcp_open: dict[tuple[str, str, str], int] = {}
        self.tcp_failures: dict[tuple[str, str, str, str], int] = {}
        # spans.Exporter.counts when OTLP export is on: exported, dropped_queue_full, dropped_collector.
        self.spans: dict[str, int] | None = None

    def link(self, side: str, source: str, destination: str) -> LinkStats:
        key = (side, source, destination)
        ls = self.links.get(key)
        if ls is None:
            ls = self.links[key] = LinkStats(side, source, destination)
        return ls

    def error(self, side: str, reason: str, source: str = "", destination: str = "", hop: str = "") -> None:
        """A response the mesh made (hop empty: this proxy, on `side`), as this proxy sent it to its client."""
        key = (side, source, destination, reason, hop or f"{self.host}/{side}")
        self.errors[key] = self.errors.get(key, 0) + 1

    def retry(self, side: str, source: str, destination: str, reason: str) -> None:
        """A try made again (or, reason budget_exhausted, one the retry budget refused): not a mesh error."""
        key = (side, source, destination, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    def tcp_link(self, side: str, source: str, destination: str) -> LinkStats:
        """The counters of a link that carries tcp: it gets tcp series and no request series."""
        key = (side, source, destination)
        self.tcp.add(key)
        return self.link(side, source, destination)

    def tcp_opened(self, key: tuple[str, str, str], n: int) -> None:
        self.tcp_open[key] = self.tcp_open.get(key, 0) + n

    def tcp_failure(self, side: str, source: str, destination: str, reason: str) -> None:
        key = (side, source, destination, reason)
        self.tcp_failures[key] = self.tcp_failures.get(key, 0) + 1

    def dump(self) -> dict[str, Any]:
        return {
            "links": [ls.dump() for ls in self.links.values()],
            # The shapes other readers of this dump know (control/links.py): errors made here keyed
            # (side, source, destination, reason), retries (side, destination, reason); what is new
            # rides in keys of its own.
            "host": self.host,
            "errors": [[s, src, dst, r, n] for (s, src, dst, r, hop), n in self.errors.items()
                       if hop == f"{self.host}/{s}"],
            "passed_errors": [[*k, n] for k, n in self.errors.items() if k[4] != f"{self.host}/{k[0]}"],
            "retries": [[*k, n] for k, n in _sum_over_source(self.retries).items()],
            "link_retries": [[*k, n] for k, n in self.retries.items()],
            "endpoints": self.endpoint_rows() if self.endpoint_rows is not None else [],
            "process": process_sample(),
            "snapshot_version": self.snapshot_version,
            "client_conns": self.client_conns,
            "tcp_links": [list(k) for k in self.tcp],
            "tcp_open": [[*k, n] for k, n in self.tcp_open.items()],
            "tcp_failures": [[*k, n] for k, n in self.tcp_failures.items()],
            **({"spans": dict(self.spans)} if self.spans is not None else {}),
        }


def _sum_over_source(retries: dict[tuple[str, str, str, str], int]) -> dict[tuple[str, str, str], int]:
    out: dict[tuple[str, str, str], int] = {}
    for (side, _, dst, reason), n in retries.items():
        out[(side, dst, reason)] = out.get((side, dst, reason), 0) + n
    return out


_COUNTED = ("errors", "passed_errors", "retries", "link_retries", "tcp_open", "tcp_failures")


def merge(dumps: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum the dumps of several workers into one."""
    links: dict[tuple[str, str, str], dict[str, Any]] = {}
    counted: dict[str, dict[tuple[str, ...], int]] = {k: {} for k in _COUNTED}
    procs: list[dict[str, float]] = []
    host = ""
    endpoints: dict[tuple[str, str], dict[str, Any]] = {}
    version = 0
    conns = 0
    tcp: set[tuple[str, ...]] = set()
    spans: dict[str, int] | None = None
    for d in dumps:
        if "spans" in d:
            spans = spans or {}
            for k, n in d["spans"].items():
                spans[k] = spans.get(k, 0) + n
        version = max(version, d["snapshot_version"])
        conns += d["client_conns"]
        tcp.update(tuple(k) for k in d.get("tcp_links", ()))
        host = host or d.get("host", "")
        for name, into in counted.items():
            for *k, n in d.get(name, ()):
                into[tuple(k)] = into.get(tuple(k), 0) + n
        if d.get("process"):
            procs.append(d["process"])
        for ep in d.get("endpoints", ()):
            # Each worker balances on its own view; an endpoint is ejected where any worker ejected it.
            cur = endpoints.get((ep["service"], ep["address"]))
            if cur is None:
                endpoints[(ep["service"], ep["address"])] = dict(ep)
                continue
            for f in ("ejections", "ejections_total", "requests", "failures", "outstanding", "latency_sum_s"):
                cur[f] += ep[f]
            cur["latency_buckets"] = [a + b for a, b in zip(cur["latency_buckets"], ep["latency_buckets"],
                                                            strict=True)]
            cur["ejected"] = cur["ejected"] or ep["ejected"]
            cur["ejected_for_s"] = max(cur["ejected_for_s"], ep["ejected_for_s"])
            cur["latency_ewma_s"] = max(cur["latency_ewma_s"], ep["latency_ewma_s"])
        for ls in d["links"]:
            key = (ls["side"], ls["source"], ls["destination"])
            cur = links.get(key)
            if cur is None:
                links[key] = {**ls, "status": list(ls["status"]), "buckets": list(ls["buckets"]),
                              "codes": dict(ls["codes"])}
                continue
            for code, n in ls["codes"].items():
                cur["codes"][code] = cur["codes"].get(code, 0) + n
            for f in ("dur_sum", "bytes_req", "bytes_resp", "open_conns", "handshakes", "tcp_conns"):
                cur[f] += ls[f]
            cur["status"] = [a + b for a, b in zip(cur["status"], ls["status"], strict=True)]
            cur["buckets"] = [a + b for a, b in zip(cur["buckets"], ls["buckets"], strict=True)]
            cur["tls_version"] = cur["tls_version"] or ls["tls_version"]
    return {
        "links": list(links.values()),
        "host": host,
        **{name: [[*k, n] for k, n in into.items()] for name, into in counted.items()},
        "endpoints": list(endpoints.values()),
        "process": merge_process([process_sample(), *procs]),
        "snapshot_version": version,
        "client_conns": conns,
        "tcp_links": [list(k) for k in tcp],
        **({"spans": spans} if spans is not None else {}),
    }


class _Collector:
    def __init__(self, dump: dict[str, Any]) -> None:
        self.d = dump

    def collect(self) -> Iterator[Any]:
        # prometheus_client (http.server, email, wsgiref...: ~4.5 MB RSS) is loaded at the first scrape,
        # not at start: an idle proxy nobody scrapes does not hold it (test_proxy_footprint).
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        lk = ["side", "source", "destination"]
        req = CounterMetricFamily(
            "glassmesh_requests", "HTTP requests per link by status code (and its class)",
            labels=[*lk, "status_class", "code"])
        dur = HistogramMetricFamily(
            "glassmesh_request_duration_seconds", "Time from request head in to response complete", labels=lk
        )
        byt = CounterMetricFamily("glassmesh_bytes", "Body bytes per link", labels=[*lk, "direction"])
        conns = GaugeMetricFamily("glassmesh_open_connections", "Open proxy-to-proxy connections", labels=lk)
        hs = CounterMetricFamily("glassmesh_tls_handshakes", "Completed mutual TLS handshakes", labels=lk)
        tcp = CounterMetricFamily("glassmesh_tcp_connections", "TCP link connections carried", labels=lk)
        tcp_open = GaugeMetricFamily("glassmesh_tcp_open_connections", "TCP link connections open now", labels=lk)
        tcp_fail = CounterMetricFamily(
            "glassmesh_tcp_connect_failures", "TCP link connections that could not be delivered, by reason",
            labels=[*lk, "reason"])
        tcp_links = {tuple(k) for k in self.d.get("tcp_links", ())}
        mtls = GaugeMetricFamily(
            "glassmesh_link_mtls", "1 when the link's connections are mutual TLS", labels=[*lk, "tls_version"]
        )
        for ls in self.d["links"]:
            lv = [ls["side"], ls["source"], ls["destination"]]
            is_tcp = tuple(lv) in tcp_links
            codes = ls["codes"]
            for code in sorted(codes, key=int):
                req.add_metric([*lv, status_class(int(code)), code], codes[code])
            if codes:
                dur.add_metric(lv, _buckets(ls["buckets"]), ls["dur_sum"])
            byt.add_metric([*lv, "request"], ls["bytes_req"])
            byt.add_metric([*lv, "response"], ls["bytes_resp"])
            conns.add_metric(lv, ls["open_conns"])
            hs.add_metric(lv, ls["handshakes"])
            if ls["tcp_conns"] or is_tcp:
                tcp.add_metric(lv, ls["tcp_conns"])
            if ls["tls_version"]:
                mtls.add_metric([*lv, ls["tls_version"]], 1)
        for *k, n in self.d.get("tcp_open", ()):
            tcp_open.add_metric(k, n)
        for *k, n in self.d.get("tcp_failures", ()):
            tcp_fail.add_metric(k, n)
        errs = CounterMetricFamily(
            "glassmesh_mesh_errors", "Responses made by the mesh itself that this proxy sent to its client: on "
            "the outbound side, what the calling app got; hop: the proxy that made it",
            labels=["side", "source", "destination", "reason", "hop"])
        host = self.d.get("host", "")
        for side, src, dst, reason, n in self.d["errors"]:
            errs.add_metric([side, src, dst, reason, f"{host}/{side}"], n)
        for *k, n in self.d.get("passed_errors", ()):
            errs.add_metric(k, n)
        retries = CounterMetricFamily(
            "glassmesh_retries", "Tries made again after a failure (reason budget_exhausted: refused by the retry "
            "budget); not mesh errors", labels=["side", "source", "destination", "reason"])
        for *k, n in self.d.get("link_retries", ()):
            retries.add_metric(k, n)
        el = ["destination", "host", "address"]
        ep_req = CounterMetricFamily("glassmesh_endpoint_requests", "Requests (tries) sent to an endpoint", labels=el)
        ep_fail = CounterMetricFamily("glassmesh_endpoint_failures",
                                      "Tries an endpoint failed (5xx, reset, refused, timed out)", labels=el)
        ep_ej = CounterMetricFamily("glassmesh_endpoint_ejections", "Times outlier detection ejected an endpoint",
                                    labels=el)
        ep_hist = HistogramMetricFamily("glassmesh_endpoint_latency_seconds",
                                        "Latency of each try sent to an endpoint, sent to answered (failures "
                                        "included)", labels=el)
        ep_out = GaugeMetricFamily("glassmesh_endpoint_ejected", "1 while an endpoint is ejected", labels=el)
        ep_lat = GaugeMetricFamily("glassmesh_endpoint_latency_ewma_seconds",
                                   "The latency estimate P2C balances on", labels=el)
        ep_busy = GaugeMetricFamily("glassmesh_endpoint_outstanding", "Requests in flight to an endpoint", labels=el)
        for ep in self.d.get("endpoints", ()):
            ev = [ep["service"], ep["host"], ep["address"]]
            ep_req.add_metric(ev, ep["requests"])
            ep_fail.add_metric(ev, ep["failures"])
            ep_ej.add_metric(ev, ep["ejections_total"])
            ep_hist.add_metric(ev, _buckets(ep["latency_buckets"]), ep["latency_sum_s"])
            ep_out.add_metric(ev, 1 if ep["ejected"] else 0)
            ep_lat.add_metric(ev, ep["latency_ewma_s"])
            ep_busy.add_metric(ev, ep["outstanding"])
        ver = GaugeMetricFamily("glassmesh_snapshot_version", "Version of the snapshot in force")
        ver.add_metric([], self.d["snapshot_version"])
        cc = GaugeMetricFamily("glassmesh_client_connections", "Open client connections on all listeners")
        cc.add_metric([], self.d["client_conns"])
        info = GaugeMetricFamily("glassmesh_build_info", "Version, and whether the hot path is mypyc-compiled",
                                 labels=["version", "hot_path"])
        info.add_metric([__version__, hot_path()], 1)
        yield from (req, dur, byt, conns, hs, tcp, tcp_open, tcp_fail, mtls, errs, retries, ep_req, ep_fail, ep_ej,
                    ep_hist, ep_out, ep_lat, ep_busy, ver, cc, info)
        yield from process_families(self.d.get("process"))
        sp = self.d.get("spans")  # with --otlp-endpoint (glassmesh.proxy.spans)
        if sp is not None:
            sent = CounterMetricFamily("glassmesh_spans_exported", "Spans the OTLP collector took")
            sent.add_metric([], sp.get("exported", 0))
            lost = CounterMetricFamily("glassmesh_spans_dropped", "Spans dropped, never waited for: the queue was "
                                       "full, or the collector did not take them", labels=["reason"])
            lost.add_metric(["queue_full"], sp.get("dropped_queue_full", 0))
            lost.add_metric(["collector"], sp.get("dropped_collector", 0))
            yield from (sent, lost)
        ctl = self.d.get("control")  # set by proxies that watch a control plane (glassmesh.proxy.watch)
        if ctl is not None:
            age = GaugeMetricFamily("glassmesh_snapshot_age_seconds",
                                    "Seconds since the snapshot in force was known current (0 while watching)")
            age.add_metric([], ctl["snapshot_age_seconds"])
            up = GaugeMetricFamily("glassmesh_control_plane_connected", "1 while the control-plane watch is connected")
            up.add_metric([], ctl["control_plane_connected"])
            yield from (age, up)
            expiry = ctl.get("cert_expiry")
            if expiry is not None:
                exp = GaugeMetricFamily("glassmesh_certificate_expiry_timestamp_seconds",
                                        "When each certificate this proxy holds expires (renewed at half-life)",
                                        labels=["identity"])
                for ident, t in sorted(expiry.items()):
                    exp.add_metric([ident], t)
                yield exp
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


def status_class(code: int) -> str:
    """`2xx` for 200..299; a code outside 100..599 counts as 5xx, as the link stats always did."""
    cls = code // 100
    return f"{cls if 0 < cls < 6 else 5}xx"


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus' cumulative `le` buckets."""
    acc = 0
    out = []
    for b, n in zip((*BUCKETS, float("inf")), counts, strict=True):
        acc += n
        out.append(("+Inf" if b == float("inf") else repr(b), acc))
    return out


def render(dump: dict[str, Any]) -> bytes:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(dump))
    return generate_latest(reg)
