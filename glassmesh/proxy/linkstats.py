"""The counters of one link, bumped on the request path (compiled with the hot path).

Plain attributes of an object the request already holds: prometheus_client's
own Counter/Histogram take a lock and a label lookup per call. stats.py turns
these into metric families at scrape time and merges workers' dumps.
"""

from __future__ import annotations

from typing import Any, Final

BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIELDS: Final = (
    "side",
    "source",
    "destination",
    "buckets",
    "dur_sum",
    "bytes_req",
    "bytes_resp",
    "open_conns",
    "handshakes",
    "tcp_conns",
    "tls_version",
)


def bucket(seconds: float) -> int:
    """The histogram bucket of `seconds`: the index of the first bound in BUCKETS >= it, as bisect_left finds it.

    A tree of comparisons with constants (compiled: plain double compares), not a loop over the
    bounds: the loop cost about 290 instructions a call, and every request makes one or two.
    Beyond the last bound (and NaN): len(BUCKETS), the +Inf bucket.
    """
    if seconds <= 0.01:
        if seconds <= 0.001:
            return 0 if seconds <= 0.0005 else 1
        if seconds <= 0.0025:
            return 2
        return 3 if seconds <= 0.005 else 4
    if seconds <= 0.25:
        if seconds <= 0.025:
            return 5
        if seconds <= 0.05:
            return 6
        return 7 if seconds <= 0.1 else 8
    if seconds <= 1.0:
        return 9 if seconds <= 0.5 else 10
    if seconds <= 2.5:
        return 11
    if seconds <= 5.0:
        return 12
    return 13 if seconds <= 10.0 else 14


class LinkStats:
    """Everything counted for one (side, source, destination)."""

    def __init__(self, side: str, source: str, destination: str) -> None:
        self.side = side
        self.source = source
        self.destination = destination
        # Responses by status code. 200s apart, in a plain int (most answers are 200: a dict update,
        # key and value boxed, cost about 600 instructions); the rest in a dict, so that a link costs
        # a few bytes, not a slot per possible code. The classes (1xx..5xx) are summed at scrape time.
        self.ok = 0
        self.codes: dict[int, int] = {}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.dur_sum = 0.0
        self.bytes_req = 0
        self.bytes_resp = 0
        self.open_conns = 0
        self.handshakes = 0
        self.tcp_conns = 0
        self.tls_version = ""

    def observe(self, status: int, seconds: float) -> None:
        if status == 200:
            self.ok += 1
        else:
            codes = self.codes
            codes[status] = codes.get(status, 0) + 1
        b = self.buckets
        i = bucket(seconds)
        b[i] = b[i] + 1
        self.dur_sum += seconds

    def dump(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in FIELDS}
        codes = dict(self.codes)
        if self.ok:
            codes[200] = self.ok
        d["codes"] = {str(k): n for k, n in codes.items()}  # JSON keys are strings (workers' dumps)
        d["status"] = classes(codes)
        return d


def classes(codes: dict[int, int]) -> list[int]:
    """Responses by class, index = status // 100 (1xx..5xx; 0 unused); a code outside 100-599 counts as 5xx."""
    st = [0, 0, 0, 0, 0, 0]
    for code, n in codes.items():
        cls = code // 100
        st[cls if 0 < cls < 6 else 5] += n
    return st
