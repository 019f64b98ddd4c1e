"""Outlier detection: eject an endpoint after consecutive failures, for a growing time.

Never more than max_ejection_percent of the service's endpoints at once (rounded
down, but one when the service has two or more endpoints and the percent is not
0; a service's only endpoint is never ejected: there is nowhere else to send).
An ejection ends by itself when its time passes: the balancer compares
`ejected_until` with the clock at each pick, no timer runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EndpointState(Protocol):
    """What ejection reads and writes of an endpoint (stages/endpoint.py's EndpointState).

    A Protocol, not an import: endpoint.py holds its Outlier, so an import back would be a circle.
    Read only when a request failed, or when an endpoint ejected before succeeds: off the common path.
    """

    consecutive_failures: int
    ejections: int  # the backoff: ejections in a row, back to 0 after a long enough good health
    ejections_total: int  # every ejection since the proxy started (a metric: never goes down)
    ejected_until: float


class Outlier:
    def __init__(self, endpoints: Sequence[EndpointState], consecutive_failures: int, base_ejection_s: float,
                 max_ejection_s: float, max_ejection_percent: int) -> None:
        self.endpoints = endpoints
        self.consecutive_failures = consecutive_failures
        self.base_ejection_s = base_ejection_s
        self.max_ejection_s = max_ejection_s
        self.max_ejection_percent = max_ejection_percent
        n = len(endpoints)
        most = n * max_ejection_percent // 100
        if most < 1 and n >= 2 and max_ejection_percent > 0:
            most = 1
        self.max_ejected = most  # endpoints ejected at once, at most
        self.ejections_total = 0  # for metrics: ejections since this service's policy was compiled

    def failed(self, ep: EndpointState, now: float) -> None:
        """A request to ep failed (its consecutive_failures already counted); eject it if it is time."""
        if now < ep.ejected_until:
            # Requests in flight when it was ejected: they do not count toward the next ejection,
            # so that it comes back with a clean count.
            ep.consecutive_failures = 0
            return
        if ep.consecutive_failures < self.consecutive_failures:
            return
        if self.ejected_count(now) >= self.max_ejected:
            return
        d = self.base_ejection_s
        i = ep.ejections
        while i > 0 and d < self.max_ejection_s:
            d *= 2.0
            i -= 1
        if d > self.max_ejection_s:
            d = self.max_ejection_s
        ep.ejections += 1
        ep.ejections_total += 1
        ep.ejected_until = now + d
        ep.consecutive_failures = 0
        self.ejections_total += 1

    def succeeded(self, ep: EndpointState, now: float) -> None:
        """A request to ep succeeded; after a longest ejection's time in good health, its backoff starts over."""
        if ep.ejections and now > ep.ejected_until + self.max_ejection_s:
            ep.ejections = 0

    def ejected_count(self, now: float) -> int:
        n = 0
        for ep in self.endpoints:
            if now < ep.ejected_until:
                n += 1
        return n
