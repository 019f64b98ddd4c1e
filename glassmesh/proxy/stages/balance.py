"""Choosing an endpoint: power of two choices over latency x load, or round robin.

P2C (Mitzenmacher; Finagle's and Linkerd's default): draw two endpoints at
random and take the one with the lower ewma * (outstanding + 1). It avoids a
slow or busy instance without the herd that "always the least loaded" causes
when many proxies decide on the same stale view.
"""

from __future__ import annotations

from random import random

from glassmesh.proxy.stages.endpoint import EndpointState


class Balancer:
    """P2C over the endpoints of a service or of one subset of it (EndpointState objects are shared)."""

    def __init__(self, endpoints: list[EndpointState]) -> None:
        self.endpoints = endpoints

    def pick(self, now: float, exclude: set[tuple[str, int]] | None = None) -> EndpointState | None:
        """The endpoint for the next try; exclude: the keys of endpoints already tried by this request.

        Skips ejected endpoints; when every endpoint is ejected or excluded, the
        least bad one not excluded (ejection alone never turns into a 503).
        None only when there is no endpoint, or every one is excluded.
        """
        eps = self.endpoints
        n = len(eps)
        if n == 0:
            return None
        if n == 1:
            a = eps[0]
            if exclude is not None and a.key in exclude:
                return None
            return a
        # One draw for both: its integer part picks the first, its fraction (uniform too) the second.
        # A call to random() costs about a third of a pick (callgrind): two cost 360 instructions more.
        # (A xorshift in mypyc's tagged ints cost more than the call.)
        r = random() * n
        i = int(r)
        j = int((r - i) * (n - 1))
        if i >= n:  # (never, as random() < 1; but an index error here would drop the request)
            i = n - 1
        if j >= i:
            j = j + 1 if j + 1 < n else i - 1
        a = eps[i]
        b = eps[j]
        a_ok = now >= a.ejected_until and (exclude is None or a.key not in exclude)
        b_ok = now >= b.ejected_until and (exclude is None or b.key not in exclude)
        if a_ok and b_ok:
            return a if a.cost(now) <= b.cost(now) else b
        if a_ok:
            return a
        if b_ok:
            return b
        return self.fallback(now, exclude)

    def fallback(self, now: float, exclude: set[tuple[str, int]] | None) -> EndpointState | None:
        """Both draws were unusable: the cheapest usable endpoint, else the one whose ejection ends first."""
        best: EndpointState | None = None
        best_cost = 0.0
        for ep in self.endpoints:
            if exclude is not None and ep.key in exclude:
                continue
            if now >= ep.ejected_until:
                c = ep.cost(now)
                if best is None or c < best_cost:
                    best = ep
                    best_cost = c
        if best is not None:
            return best
        for ep in self.endpoints:
            if exclude is not None and ep.key in exclude:
                continue
            if best is None or ep.ejected_until < best.ejected_until:
                best = ep
        return best


class RoundRobinBalancer(Balancer):
    """Each endpoint in turn (mesh.yaml `balance: round_robin`), with the same skipping as P2C."""

    def __init__(self, endpoints: list[EndpointState]) -> None:
        super().__init__(endpoints)
        self.i = 0

    def pick(self, now: float, exclude: set[tuple[str, int]] | None = None) -> EndpointState | None:
        eps = self.endpoints
        n = len(eps)
        for _ in range(n):
            i = self.i + 1
            if i >= n:
                i = 0
            self.i = i
            ep = eps[i]
            if now >= ep.ejected_until and (exclude is None or ep.key not in exclude):
                return ep
        return self.fallback(now, exclude)
