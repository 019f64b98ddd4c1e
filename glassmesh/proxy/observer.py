"""The trace ring's seat in the request path, as a compiled base class (compiled with the hot path).

`exchange_done` tells every finished exchange to the trace ring. Through
Runtime.observers (a list of callables) that was a generic Python call per
exchange, which cost about 2% of the pair's CPU in `make bench` even with a ring
that returned at once. Through this class it is a native method call. It lives
apart from ring.py because ring.py reads exchanges natively (it imports http),
and http importing ring would make an import circle.
"""

from __future__ import annotations

from typing import Any


class Observer:
    """Told of each finished exchange, natively: (exchange, status, mesh error reason or "")."""

    def observe(self, ex: Any, status: int, reason: str) -> None:
        pass
