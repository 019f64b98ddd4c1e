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
    """The histogram bucket of `seconds`: the index of the first bound >= it, as bisect_left finds it."""
    i = 0
    for bound in _BOUNDS:
        if seconds <= bound:
            break
        i += 1
    return i


class LinkStats:
    """Everything counted for one (side, source, destination)."""

    def __init__(self, side: str, source: str, destination: str) -> None:
        self.side = side
        self.source = source
        self.destination = destination
        # Responses by status code: a dict, not a list of every code, so that an idle link costs
        # a few bytes; the classes (1xx..5xx) are summed from it at scrape time.
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
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        b = self.buckets
        i = bucket(seconds)
        b[i] = b[i] + 1
        self.dur_sum += seconds

    def dump(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in FIELDS}
        d["codes"] = {str(k): n for k, n in self.codes.items()}  # JSON keys are strings (workers' dumps)
        d["status"] = classes(self.codes)
        return d


def classes(codes: dict[int, int]) -> list[int]:
    """Responses by class, index = status // 100 (1xx..5xx; 0 unused); a code outside 100-599 counts as 5xx."""
    st = [0, 0, 0, 0, 0, 0]
    for code, n in codes.items():
        cls = code // 100
        st[cls if 0 < cls < 6 else 5] += n
    return st
