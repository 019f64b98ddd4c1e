"""The counters of one link, bumped on the request path (compiled with the hot path).

Plain attributes of an object the request already holds: prometheus_client's
own Counter/Histogram take a lock and a label lookup per call. stats.py turns
these into metric families at scrape time and merges workers' dumps.
"""

from __future__ import annotations

from typing import Any, Final

BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A list, not the Final tuple: mypyc builds a Final tuple of floats anew at each use.
_BOUNDS: list[float] = list(BUCKETS)
FIELDS: Final = (
    "side",
    "source",
    "destination",
    "status",
    "buckets",
    "dur_sum",
    "bytes_req",
    "bytes_resp",
    "open_conns",
    "handshakes",
    "tcp_conns",
    "tls_version",
)


class LinkStats:
    """Everything counted for one (side, source, destination)."""

    def __init__(self, side: str, source: str, destination: str) -> None:
        self.side = side
        self.source = source
        self.destination = destination
        self.status = [0, 0, 0, 0, 0, 0]  # index = status // 100 (1xx..5xx), 0 unused
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.dur_sum = 0.0
        self.bytes_req = 0
        self.bytes_resp = 0
        self.open_conns = 0
        self.handshakes = 0
        self.tcp_conns = 0
        self.tls_version = ""

    def observe(self, status: int, seconds: float) -> None:
        cls = status // 100
        st = self.status
        k = cls if 0 < cls < 6 else 5
        st[k] = st[k] + 1
        i = 0
        for bound in _BOUNDS:  # the first bound >= seconds, as bisect_left finds it
            if seconds <= bound:
                break
            i += 1
        b = self.buckets
        b[i] = b[i] + 1
        self.dur_sum += seconds

    def dump(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in FIELDS}
