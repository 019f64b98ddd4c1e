"""Whether a failed try may be tried again (per route), and the budget that caps retries (per service).

The budget is Linkerd's shape: retries at most `percent`% of requests over the
last ~10 seconds, plus `min_per_second` (10 s worth of it as a floor), so that
retries cannot multiply an outage: when every request fails, load grows by at
most that share instead of by the number of attempts.
"""

from __future__ import annotations

from typing import Final

# Methods that mean the same when sent twice (RFC 9110 9.2.2).
IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))

WINDOW_S: Final = 10  # the budget's window, in one-second buckets


class RetryPolicy:
    """A route's retry rule. The caller counts tries: at most `attempts`, the first included."""

    def __init__(self, attempts: int, on_status: list[int], connect_failures: bool) -> None:
        self.attempts = attempts
        self.on_status = frozenset(on_status)
        self.connect_failures = connect_failures

    def may_retry(self, method: bytes, status: int, connect_failure: bool, body_sent: bool) -> bool:
        """May this failed try be tried again (on another endpoint), budget aside?

        connect_failure: nothing reached an endpoint, so any method is safe (if
        the route allows it). Otherwise only a listed status, only for an
        idempotent method, and only when no request body was sent that could
        not be sent again (body_sent: part of a body went out and is not kept).
        """
        if connect_failure:
            return self.connect_failures
        if body_sent or status not in self.on_status:
            return False
        return method in IDEMPOTENT


class RetryBudget:
    """Retries allowed per service: at most percent% of requests plus min_per_second, over ~10 s.

    Exact bound, for a test to hold it to: at every retry it lets through at
    time t, the retries in (t-10 s, t] are at most percent% of the requests in
    (t-10 s, t] plus 10 * min_per_second. Requests are counted in one-second
    buckets; retries are checked against 11 of them and requests against the
    last 10, so the bucketing can only make it stricter.
    """

    def __init__(self, percent: float, min_per_second: int) -> None:
        self.ratio = percent / 100.0
        self.floor = min_per_second * WINDOW_S
        self.requests = [0] * (WINDOW_S + 1)
        self.retries = [0] * (WINDOW_S + 1)
        self.sec = 0  # the second that bucket `cur` counts
        self.cur = 0
        # The current bucket's requests are counted here, in a native int, and written into the list
        # when the second ends or a retry sums them: a request costs a float compare and an add
        # (counting in the list, with int(now) each time, was 245 instructions a request).
        self.count = 0
        self.start = 0.0  # the current second, [start, end)
        self.end = 1.0
        self.spent = 0  # retries let through, and refused, for metrics
        self.refused = 0

    def set(self, percent: float, min_per_second: int) -> None:
        """New parameters from a new snapshot; the counts are kept."""
        self.ratio = percent / 100.0
        self.floor = min_per_second * WINDOW_S

    def _advance(self, now: float) -> int:
        self.requests[self.cur] = self.count
        sec = int(now)
        if sec != self.sec:
            gap = sec - self.sec
            self.sec = sec
            self.start = float(sec)
            self.end = float(sec + 1)
            n = WINDOW_S + 1
            if gap < 0 or gap >= n:
                gap = n
            cur = self.cur
            for _ in range(gap):
                cur += 1
                if cur >= n:
                    cur = 0
                self.requests[cur] = 0
                self.retries[cur] = 0
            self.cur = cur
            self.count = 0
        return self.cur

    def request(self, now: float) -> None:
        """A request (its first try) started: it adds percent% of a retry to the budget."""
        if now >= self.end or now < self.start:
            self._advance(now)
        self.count += 1

    def try_spend(self, now: float) -> bool:
        """A retry wants to go: True (and counted) if the budget has room, else False."""
        cur = self._advance(now)
        n = WINDOW_S + 1
        retries = 0
        requests = 0
        for i in range(n):
            retries += self.retries[i]
            if i != (cur + 1) % n:  # the oldest bucket: its requests may be more than 10 s old
                requests += self.requests[i]
        if retries + 1 > requests * self.ratio + self.floor:
            self.refused += 1
            return False
        self.retries[cur] += 1
        self.spent += 1
        return True
