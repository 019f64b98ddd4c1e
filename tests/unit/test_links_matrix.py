"""The link matrix from proxies' counters (control/links.py): rates over two samples, percentiles from the
histogram, attribution of retries and mesh errors to links, worst first, proxies that restarted.

The counters are made by the proxy's own Stats (proxy/stats.py), as the `links` ask sends them.
"""

from __future__ import annotations

from typing import Any

import pytest

from glassmesh.control.links import LinkSamples, matrix, percentile
from glassmesh.proxy.linkstats import BUCKETS
from glassmesh.proxy.stats import Stats, merge


def sample(at: float, stats: Stats) -> dict[str, Any]:
    d = stats.dump()
    return {"at": at, "stats": merge([{**d, "endpoints": []}])}


def traffic(st: Stats, source: str, destination: str, n: int, status: int = 200, seconds: float = 0.002,
            side: str = "outbound") -> None:
    ls = st.link(side, source, destination)
    ls.tls_version = "TLSv1.3"
    for _ in range(n):
        ls.observe(status, seconds)


def test_percentile_interpolates_within_buckets() -> None:
    b = [0] * (len(BUCKETS) + 1)
    assert percentile(b, 0.5) is None
    b[3] = 100  # all in (0.0025, 0.005]
    assert percentile(b, 0.5) == pytest.approx(0.00375)
    assert percentile(b, 0.99) == pytest.approx(0.0025 + 0.0025 * 0.99)
    b[-1] = 100  # half beyond the last bound: p99 is "at least 10 s"
    assert percentile(b, 0.99) == BUCKETS[-1]


def test_rates_success_latency_over_two_samples_worst_first() -> None:
    h1, h2 = Stats(), Stats()
    traffic(h1, "a", "b", 1000)  # before the window: not in the rates
    traffic(h1, "a", "c", 10)
    first = {"host1": sample(100.0, h1), "host2": sample(100.0, h2)}
    traffic(h1, "a", "b", 180, seconds=0.002)
    traffic(h1, "a", "b", 20, status=503, seconds=0.2)
    traffic(h1, "a", "c", 40, seconds=0.02)
    traffic(h2, "a", "b", 200, side="inbound")  # the inbound side's view of the same link: not counted twice
    h1.retry("outbound", "b", "connect_refused")
    h1.retry("outbound", "b", "connect_refused")
    h1.error("outbound", "no_endpoints")
    h2.error("inbound", "connect_refused")
    rows = matrix({"host1": (sample(102.0, h1), first["host1"]), "host2": (sample(102.0, h2), first["host2"])})
    assert [(r["source"], r["destination"]) for r in rows] == [("a", "b"), ("a", "c")]  # the failing link first
    ab, ac = rows
    assert ab["requests"] == 200 and ab["rate_rps"] == 100.0 and ab["window_s"] == 2.0
    assert ab["success"] == 0.9 and ab["status"] == {"2xx": 180, "5xx": 20}
    assert ab["p50_ms"] is not None and ab["p50_ms"] <= 2.5 and ab["p99_ms"] > 100
    assert ab["mtls"] == "TLSv1.3" and ab["seen_at"] == ["host1/outbound", "host2/inbound"]
    assert ab["retries"] == {"connect_refused": 2}
    # Mesh errors by hop: each to the busiest link of that hop (these counters do not name the link).
    assert ab["mesh_errors"] == {"host1/outbound": {"no_endpoints": 1}, "host2/inbound": {"connect_refused": 1}}
    assert ac["success"] == 1.0 and ac["rate_rps"] == 20.0 and ac["mesh_errors"] == {}


def test_mesh_errors_that_name_their_link_go_to_it() -> None:
    """Counters keyed by source and destination (a later proxy) are attributed exactly."""
    prev = sample(1.0, Stats())
    st = Stats()
    traffic(st, "a", "b", 10)
    traffic(st, "x", "c", 1)
    cur = sample(2.0, st)
    cur["stats"]["errors"] = [["outbound", "x", "c", "no_endpoints", 4]]
    rows = {(r["source"], r["destination"]): r for r in matrix({"h": (cur, prev)})}
    assert rows[("x", "c")]["mesh_errors"] == {"h/outbound": {"no_endpoints": 4}}
    assert rows[("a", "b")]["mesh_errors"] == {}


def test_a_restarted_proxy_counts_from_its_start_and_no_base_gives_no_rate() -> None:
    before, after = Stats(), Stats()
    traffic(before, "a", "b", 500)
    traffic(after, "a", "b", 30)  # restarted: fewer than before
    (row,) = matrix({"h": (sample(10.0, after), sample(5.0, before))})
    assert row["requests"] == 30 and row["rate_rps"] is None and row["window_s"] is None
    (row,) = matrix({"h": (sample(10.0, after), None)})
    assert row["requests"] == 30 and row["rate_rps"] is None


def test_idle_links_come_last_and_tcp_links_count_connections() -> None:
    st = Stats()
    traffic(st, "a", "b", 5)
    base = sample(0.0, st)
    ls = st.tcp_link("outbound", "web", "db")
    ls.tcp_conns += 6
    st.link("outbound", "a", "z")
    rows = matrix({"h": (sample(2.0, st), base)})
    assert [(r["source"], r["destination"]) for r in rows] == [("web", "db"), ("a", "b"), ("a", "z")]
    assert rows[0]["protocol"] == "tcp" and rows[0]["rate_rps"] == 3.0 and rows[0]["success"] is None
    assert rows[2]["requests"] == 0 and rows[2]["success"] is None


def test_samples_give_a_base_between_one_second_and_a_minute() -> None:
    s = LinkSamples()
    s.add("h", {"at": 100.0, "stats": {}})
    s.add("h", {"at": 150.0, "stats": {}})
    assert s.base("h", 150.5) is not None and s.base("h", 150.5)["at"] == 100.0  # the newer is too recent
    assert s.base("h", 152.0)["at"] == 150.0  # type: ignore[index]
    assert s.base("h", 300.0) is None and s.base("other", 150.0) is None
