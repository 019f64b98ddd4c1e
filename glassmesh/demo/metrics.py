"""Per-link figures (rate, success, p50/p99, mTLS) from a proxy's /metrics text.

Pure functions over scraped samples, so the arithmetic is tested with numbers
and the runner only fetches and prints. Latency percentiles are estimated the
way Prometheus' histogram_quantile does: find the bucket holding the rank and
interpolate linearly inside it; a rank in the open +Inf bucket answers the
highest finite bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Link = tuple[str, str]  # (source, destination)


@dataclass
class LinkSample:
    """Cumulative counters of one link on one side, as scraped at one moment."""

    requests: dict[str, float] = field(default_factory=dict)  # status_class -> count
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    mtls: bool = False
    tls_version: str | None = None
    handshakes: float = 0.0

    @property
    def total(self) -> float:
        return sum(self.requests.values())


@dataclass(frozen=True)
class Figures:
    requests: float
    rate: float | None  # req/s; None when the interval is unknown
    success: float | None  # share of non-5xx, None without requests
    p50: float | None  # seconds
    p99: float | None
    mtls: bool
    tls_version: str | None
    handshakes: float = 0.0


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Estimate the q-quantile from cumulative (le, count) buckets; None without observations.

    Buckets may come in any order and must include le=+Inf (it holds the total).
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is outside [0, 1]")
    bs = sorted(buckets)
    if not bs or not math.isinf(bs[-1][0]):
        return None
    total = bs[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in bs:
        if count >= rank and count > prev_count:
            if math.isinf(le):
                # The open bucket: all we know is "above the last finite bound".
                return prev_le if len(bs) > 1 else None
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


def bucket_delta(now: dict[float, float], before: dict[float, float] | None) -> list[tuple[float, float]]:
    """Bucket counts observed between two scrapes (a counter reset counts from zero)."""
    if before is None:
        return sorted(now.items())
    out = [(le, c - before.get(le, 0.0)) for le, c in now.items()]
    if any(c < 0 for _, c in out):  # the proxy restarted: its counters started again
        return sorted(now.items())
    return sorted(out)


def parse_links(text: str, side: str = "outbound") -> dict[Link, LinkSample]:
    """Group the per-link samples of one side from Prometheus text."""
    links: dict[Link, LinkSample] = {}

    def get(labels: dict[str, str]) -> LinkSample | None:
        if labels.get("side") != side or "source" not in labels or "destination" not in labels:
            return None
        return links.setdefault((labels["source"], labels["destination"]), LinkSample())

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name, labels, value = s.name, s.labels, float(s.value)
            if name == "glassmesh_requests_total":
                if (ls := get(labels)) is not None:
                    cls = labels.get("status_class", "?")
                    ls.requests[cls] = ls.requests.get(cls, 0.0) + value
            elif name == "glassmesh_request_duration_seconds_bucket":
                if (ls := get(labels)) is not None:
                    le = float(labels["le"])
                    ls.buckets[le] = ls.buckets.get(le, 0.0) + value
            elif name == "glassmesh_tls_handshakes_total":
                if (ls := get(labels)) is not None:
                    ls.handshakes += value
            elif name == "glassmesh_link_mtls":
                if (ls := get(labels)) is not None and value >= 1:
                    ls.mtls = True
                    ls.tls_version = labels.get("tls_version") or ls.tls_version
    return links


def parse_mesh_errors(text: str, side: str = "outbound") -> dict[str, float]:
    """`glassmesh_mesh_errors_total` of one side by reason, with `glassmesh_retries_total` as `retried_<reason>`
    (requests sent again, to another endpoint or on a fresh connection; a budget's refusals left out)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("side") != side:
                continue
            reason = s.labels.get("reason", "?")
            if s.name == "glassmesh_retries_total" and reason != "budget_exhausted":
                reason = "retried_" + reason
            elif s.name != "glassmesh_mesh_errors_total":
                continue
            out[reason] = out.get(reason, 0.0) + float(s.value)
    return out


def retried(errors: dict[str, float]) -> float:
    """Requests the proxy retried on another endpoint (nothing had reached an app)."""
    return sum(v for k, v in errors.items() if k.startswith("retried_"))


def figures(now: LinkSample, before: LinkSample | None = None, seconds: float | None = None) -> Figures:
    """The link's figures over the interval since `before` (or since the proxy started)."""
    reqs = {k: v - (before.requests.get(k, 0.0) if before else 0.0) for k, v in now.requests.items()}
    if any(v < 0 for v in reqs.values()):  # counter reset
        reqs = dict(now.requests)
    total = sum(reqs.values())
    errors = reqs.get("5xx", 0.0)
    buckets = bucket_delta(now.buckets, before.buckets if before else None)
    return Figures(
        requests=total,
        rate=total / seconds if seconds else None,
        success=(total - errors) / total if total > 0 else None,
        p50=histogram_quantile(0.5, buckets),
        p99=histogram_quantile(0.99, buckets),
        mtls=now.mtls,
        tls_version=now.tls_version,
        handshakes=max(0.0, now.handshakes - (before.handshakes if before else 0.0)),
    )


def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def fmt_pct(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def links_of(samples: Iterable[dict[Link, LinkSample]]) -> list[Link]:
    """Every link seen in any of the scrapes, sorted."""
    return sorted({link for s in samples for link in s})
