"""What the proxy knows about one endpoint of a destination service: load, latency, health.

Kept across snapshots for the same (host, port) by compile_policy, so that a new
snapshot does not forget an endpoint's latency or an ejection in force.
"""

from __future__ import annotations

from math import exp
from typing import Any

from glassmesh.proxy.linkstats import BUCKETS, bucket
from glassmesh.proxy.stages.eject import Outlier

# How fast the latency estimate forgets: a sample `DECAY_S` old weighs half as much as a new one.
# Rises are taken at once (peak EWMA, as Finagle and Linkerd do): a slow instance is avoided at
# its first slow answer, and found fast again only after answers, or silence, say so.
DECAY_S = 2.0
# A failed request (5xx, reset, refused) counts as at least this slow, so that an instance that
# fails fast does not look like the fastest one.
FAILURE_PENALTY_S = 0.25
# What an endpoint never measured starts at when the service has no measured one either.
DEFAULT_EWMA_S = 0.001


class EndpointState:
    """One endpoint; the balancer reads it per pick, the proxy updates it per request."""

    def __init__(self, host: str, port: int, host_name: str, mesh: bool, labels: dict[str, str],
                 ewma_s: float = DEFAULT_EWMA_S, now: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.key: tuple[str, int] = (host, port)  # made once: a retry's `exclude` set holds these
        self.host_name = host_name
        self.mesh = mesh
        self.labels = labels
        self.outstanding = 0
        self.ewma_s = ewma_s
        self.stamp = now  # when ewma_s was last updated
        self.ejected_until = 0.0  # monotonic seconds; ejected while now < this
        self.ejections = 0  # ejections so far; each one lasts twice the one before, up to the maximum
        self.ejections_total = 0  # ejections since the proxy started: `ejections` starts over, this does not
        self.consecutive_failures = 0
        self.requests = 0
        self.failures = 0
        # Each try's latency (request sent to answer complete, failures included), as a histogram
        # with the links' buckets: glassmesh_endpoint_latency_seconds.
        self.lat_buckets = [0] * (len(BUCKETS) + 1)
        self.lat_sum = 0.0
        self.outlier: Outlier | None = None  # the service's outlier detection, set by compile_policy
        # Whatever the proxy keeps for this endpoint (its pool of connections): no lookup per request.
        self.pool: Any = None

    def begin(self) -> None:
        """A request is sent to this endpoint (outstanding requests weigh its cost)."""
        self.outstanding += 1

    def end(self, ok: bool, latency_s: float, now: float) -> None:
        """The request ended: ok=False for a 5xx from the app or peer, or a connect failure or reset.

        Updates the latency EWMA and the failure counts, and asks the outlier
        detection to eject the endpoint after too many consecutive failures.
        """
        if self.outstanding > 0:
            self.outstanding -= 1
        self.requests += 1
        b = self.lat_buckets
        i = bucket(latency_s)
        b[i] = b[i] + 1
        self.lat_sum += latency_s
        if not ok:
            self.failures += 1
            if latency_s < FAILURE_PENALTY_S:
                latency_s = FAILURE_PENALTY_S
        self.observe(latency_s, now)
        outlier = self.outlier
        if ok:
            self.consecutive_failures = 0
            if outlier is not None and self.ejections:
                outlier.succeeded(self, now)
        else:
            self.consecutive_failures += 1
            if outlier is not None:
                outlier.failed(self, now)

    def observe(self, latency_s: float, now: float) -> None:
        """Fold one latency sample into the peak EWMA, from the estimate cost() saw.

        An endpoint avoided for a while was picked because its estimate had decayed
        (cost()); the sample starts from that, not from the old peak, which put the
        estimate back near the peak after each probe and starved the endpoint again
        for seconds (two instances under one-at-a-time traffic: one served nothing
        for over 5 s of a minute, tests/e2e/test_control_watch.py).
        """
        dt = now - self.stamp
        ewma = decayed(self.ewma_s, dt)
        if latency_s >= ewma:
            self.ewma_s = latency_s
        else:
            if dt < 0.0:
                dt = 0.0
            # The weight of the new sample grows with the time since the last one (dt/(dt+DECAY_S) is
            # 1-exp(-dt/DECAY_S) without the exp): a busy endpoint's estimate does not jump per request.
            self.ewma_s = ewma + (latency_s - ewma) * (dt / (dt + DECAY_S)) if dt > 0.0 else ewma
        self.stamp = now

    def cost(self, now: float) -> float:
        """Latency estimate times (outstanding + 1); an estimate not refreshed lately decays toward 0,

        so that an endpoint avoided for being slow is tried again after a while instead of never.
        """
        return decayed(self.ewma_s, now - self.stamp) * (self.outstanding + 1)

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


def decayed(ewma: float, dt: float) -> float:
    """A latency estimate dt seconds after its last sample: kept for DECAY_S, then falling by e every DECAY_S.

    Exponential, so that an instance avoided after one slow answer is tried again within
    DECAY_S * (1 + ln(slow / fast)): 8 s after an answer 20 times slower than its peer's,
    11 s after one 100 times slower. Falling as 1/dt (before) took DECAY_S * slow / fast: 40 s
    and 200 s, long enough for two instances under one-at-a-time traffic to look like one
    (tests/e2e/test_control_watch.py: one served nothing for the last 5 s of a minute).
    """
    return ewma * exp((DECAY_S - dt) / DECAY_S) if dt > DECAY_S else ewma
