"""How many connections (or streams) a set of callers holds open, against its limit.

Local apps share one budget (limits.max_client_connections); each peer
service identity has its own at the inbound (limits.max_peer_streams for
HTTP connections and mux streams, limits.max_peer_connections for the
multiplexed TLS connections themselves), so that one peer, however many
streams or connections it opens, can lock out neither the local apps nor
the other peers. Checked once per connection, never per request.
"""

from __future__ import annotations


class Budget:
    __slots__ = ("count", "limit")

    def __init__(self, limit: int) -> None:
        self.count = 0
        self.limit = limit

    def take(self) -> bool:
        """Count one more; False (and not counted) when that would go over the limit."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True
