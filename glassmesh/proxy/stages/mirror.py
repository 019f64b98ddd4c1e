"""Mirroring: which requests of a route also go, as a copy, to another subset (responses dropped)."""

from __future__ import annotations

from random import random

from glassmesh.proxy.stages.balance import Balancer


class MirrorStage:
    def __init__(self, subset: bytes, balancer: Balancer, percent: float) -> None:
        self.subset = subset
        self.balancer = balancer
        self.p = percent / 100.0
        self.mirrored = 0

    def pick(self) -> Balancer | None:
        """The mirror subset's balancer for percent% of requests, else None (and None when it has no endpoint)."""
        if self.p > 0.0 and self.balancer.endpoints and random() < self.p:
            self.mirrored += 1
            return self.balancer
        return None
