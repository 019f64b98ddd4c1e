"""A route's weighted split over subsets: a 1% canary gets 1% of requests, in expectation exactly.

One uniform draw per request against cumulative weights (no smoothing, no
counters that a new snapshot would reset: changing weights mid-flight takes
effect from the next request and drops none).
"""

from __future__ import annotations

from random import random

from glassmesh.proxy.stages.balance import Balancer


class Split:
    def __init__(self, backends: list[tuple[bytes, Balancer, int]]) -> None:
        """backends: (subset name, its balancer, weight); weights > 0 (compile_policy drops the others)."""
        self.names = [b[0] for b in backends]
        self.balancers = [b[1] for b in backends]
        total = 0
        cum: list[float] = []
        for b in backends:
            total += b[2]
            cum.append(float(total))
        self.total = float(total)
        self.cumulative = cum
        self.n = len(backends)

    def pick(self) -> tuple[bytes, Balancer]:
        """(subset name, its balancer) for one request; b"" names "every endpoint" (no subsets)."""
        n = self.n
        if n == 1:
            return self.names[0], self.balancers[0]
        r = random() * self.total
        cum = self.cumulative
        i = 0
        last = n - 1
        while i < last and r >= cum[i]:
            i += 1
        return self.names[i], self.balancers[i]
