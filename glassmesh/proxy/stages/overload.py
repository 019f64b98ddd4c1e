"""Per-destination limits: beyond one, a request fails at once (503 naming the limit) instead of queueing.

Counters only; the proxy calls them where a request starts and ends, where it
waits for a connection, and where it opens and closes one. None means no limit.
"""

from __future__ import annotations

MAX_REQUESTS = "max_requests"
MAX_PENDING = "max_pending"
MAX_CONNECTIONS = "max_connections"

_NONE = -1  # no limit


class Limits:
    def __init__(self, max_connections: int | None = None, max_pending: int | None = None,
                 max_requests: int | None = None) -> None:
        self.max_connections = _NONE
        self.max_pending = _NONE
        self.max_requests = _NONE
        self.set(max_connections, max_pending, max_requests)
        self.connections = 0
        self.pending = 0
        self.requests = 0
        # Refusals so far, for metrics, by limit.
        self.refused_connections = 0
        self.refused_pending = 0
        self.refused_requests = 0

    def set(self, max_connections: int | None, max_pending: int | None, max_requests: int | None) -> None:
        """New maxima from a new snapshot; the counts of what is in flight are kept."""
        self.max_connections = _NONE if max_connections is None else max_connections
        self.max_pending = _NONE if max_pending is None else max_pending
        self.max_requests = _NONE if max_requests is None else max_requests

    def admit(self) -> str | None:
        """A request starts: None if admitted (call done() when it ends), else the name of the limit."""
        if self.max_requests >= 0 and self.requests >= self.max_requests:
            self.refused_requests += 1
            return MAX_REQUESTS
        self.requests += 1
        return None

    def done(self) -> None:
        if self.requests > 0:
            self.requests -= 1

    def wait(self) -> str | None:
        """A request must wait for a connection: None if it may (call waited() after), else "max_pending"."""
        if self.max_pending >= 0 and self.pending >= self.max_pending:
            self.refused_pending += 1
            return MAX_PENDING
        self.pending += 1
        return None

    def waited(self) -> None:
        if self.pending > 0:
            self.pending -= 1

    def connect(self) -> str | None:
        """A new connection to the destination: None if allowed (call closed() after), else "max_connections"."""
        if self.max_connections >= 0 and self.connections >= self.max_connections:
            self.refused_connections += 1
            return MAX_CONNECTIONS
        self.connections += 1
        return None

    def closed(self) -> None:
        if self.connections > 0:
            self.connections -= 1
