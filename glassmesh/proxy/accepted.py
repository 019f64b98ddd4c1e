"""The connections a listener accepted, recorded as the event loop makes each one (compiled with the hot path).

A listener must know what it accepted, to close or drain those connections when it
stops (listeners.py, drain.py, a seamless restart). The event loop calls `accept`
once per new connection, so it runs as native code: as an interpreted method, with
the lambda it called, it cost about 1 us (some 3,500 instructions) per connection,
3% of what a proxy spends on a new connection.

Bounded: the list is pruned of closed connections each time it doubles (amortized
O(1) per accept), so it holds at most about twice the open ones plus 64.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

_mono: Final = time.monotonic


def is_open(proto: Any) -> bool:
    """Whether a protocol's connection is up and not closing (one not given its transport yet is not)."""
    t = getattr(proto, "transport", None)
    return t is not None and not t.is_closing()


class Accepted:
    """A listener's protocol factory, and every protocol it made that may still be open."""

    def __init__(self, factory: Callable[[], Any], forget_s: float) -> None:
        self.factory = factory  # the snapshot's meaning of the listener (replaced on each update)
        self.forget_s = forget_s  # a protocol whose connection never came up counts this long
        self.protos: list[Any] = []
        self.times: list[float] = []  # when each was accepted (monotonic), beside it
        self.prune_at = 64

    def accept(self) -> Any:
        proto = self.factory()
        protos = self.protos
        protos.append(proto)
        self.times.append(_mono())
        if len(protos) > self.prune_at:  # amortized: a prune at each doubling
            self._prune(self.forget_s)
            self.prune_at = 2 * len(self.protos) + 64
        return proto

    def _prune(self, handshake_s: float) -> None:
        now = _mono()
        keep: list[Any] = []
        times: list[float] = []
        for i, p in enumerate(self.protos):
            t = self.times[i]
            if is_open(p) or (now - t < handshake_s and getattr(p, "transport", None) is None):
                keep.append(p)
                times.append(t)
        self.protos = keep
        self.times = times

    def open_conns(self, handshake_s: float) -> list[Any]:
        """Those still open, and those that may still be in their TLS handshake (for handshake_s after accept).

        A connection whose handshake fails is never given to its protocol, so one without
        a transport counts only until the handshake timeout.
        """
        now = _mono()
        return [p for i, p in enumerate(self.protos) if is_open(p) or (
            getattr(p, "transport", None) is None and now - self.times[i] < handshake_s)]
