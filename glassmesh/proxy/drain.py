"""A proxy that stops (SIGTERM) drains: nothing in flight is dropped, and callers move elsewhere.

In order:

1. It stops accepting at once: every listener but admin closes (the
   connections already in a listener's queue are taken first, see
   listeners.py). With SO_REUSEPORT a new proxy started on the same ports
   takes every new connection from then on: a restart is "start the new one,
   SIGTERM the old one".
2. It tells its callers to move. An HTTP/1.1 connection (an app's, or a
   peer's with the http1 peer protocol) gets `connection: close` on its next
   response and an idle one is closed now. A peer's multiplexed connection
   gets GOAWAY (glassmesh/protocols/mux.py): the peer opens no new stream
   there and connects anew, the streams open finish, and the connection
   closes with its last one. tcp links and upgraded tunnels run on.
3. It waits until nothing accepted is left open, and exits (status 0) then,
   or at the drain timeout, when it closes what is left.

Meanwhile `/ready` on the admin port (still served) answers 503, draining,
so that a health check stops sending here.

After a seamless restart (handover.py) the old process drains the same way,
but its successor serves the very sockets it listened on: admin stops
accepting too (the successor answers it), and what waits in the queues is
left to the successor.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from glassmesh.proxy.listeners import Listener, Listeners, _graceful
from glassmesh.proxy.log import log
from glassmesh.proxy.runtime import Runtime

DRAIN_TIMEOUT_S = 30.0  # --drain-timeout: how long a stopping proxy lets what is in flight finish
# A peer's idle stream is left to the peer to close after GOAWAY (closing it here races a request
# the peer is sending on it), and a connection just accepted gets its first request answered; one
# still without a request this long after the drain began is closed.
IDLE_GRACE_S = 1.0
_POLL_S = 0.05  # how often it looks whether anything is left (the exit comes at most this late)
# Linux >= 5.14: when a listening socket closes, connections in its queue or still in their TCP
# handshake go to another socket on the port (the new proxy's) instead of being reset.
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def _migrate_hint() -> str:
    try:
        with open(MIGRATE_REQ) as f:
            on = f.read().strip() != "0"
    except OSError:
        return ""
    return "" if on else (" (net.ipv4.tcp_migrate_req is 0: a connection whose TCP handshake is under way as a "
                          "port closes is reset; set it to 1 to hand it to a proxy started on the same port)")


class Drain:
    """The state of a drain, for /ready: since when, how long it may take, how much is left."""

    def __init__(self, timeout: float, why: str = "stopping (SIGTERM)") -> None:
        self.timeout = timeout
        self.why = why
        self.started = time.monotonic()
        self.left = 0

    def doc(self) -> dict[str, Any]:
        return {"reason": f"draining: {self.why}, {self.left} connection{'s' * (self.left != 1)} "
                          f"still open, at most {max(0.0, self.started + self.timeout - time.monotonic()):.1f} s "
                          "more",
                "connections": self.left, "timeout_s": self.timeout}


def _tell(rt: Runtime, listeners: Listeners, stopped: list[Listener], elapsed: float) -> list[Any]:
    """Ask everything open to finish (again: it is cheap, and connections taken from a queue come late).

    Returns the connections still open.
    """
    left: list[Any] = []
    for lst in stopped:
        conns = lst.open_conns(listeners.handshake_timeout() if lst.spec.tls else 1.0)
        for p in conns:
            _graceful(p)
        left += conns
    if elapsed >= IDLE_GRACE_S:
        for c in list(rt.conns):
            t = c.transport
            if t is not None and not c.queue and not t.is_closing():
                t.close()
    return left


async def drain(rt: Runtime, listeners: Listeners, state: Drain, cut: asyncio.Event, handed: bool = False) -> None:
    """Stop accepting, tell callers, wait for what is in flight (up to `state.timeout`, or `cut`).

    `handed`: a successor serves these sockets now (handover.py), admin included.
    """
    stopped = listeners.stop_accepting(keep=() if handed else ("admin",), handed=handed)
    rt.ready = False
    log(f"draining: stopped accepting on {len(stopped)} listener{'s' * (len(stopped) != 1)}; what is in flight "
        f"has up to {state.timeout:g} s{'' if handed else _migrate_hint()}")
    deadline = state.started + state.timeout
    while True:
        now = time.monotonic()
        left = _tell(rt, listeners, stopped, now - state.started)
        state.left = len(left)
        if not left and not listeners.adopting:
            log(f"drained in {now - state.started:.1f} s: nothing left in flight")
            return
        if now >= deadline or cut.is_set():
            why = "a second stop signal" if cut.is_set() else f"the drain timeout ({state.timeout:g} s)"
            log(f"closing {len(left)} connection{'s' * (len(left) != 1)} still open at {why}")
            for p in left:
                t = getattr(p, "transport", None)
                if t is not None:
                    t.abort()  # a close would wait for a reader that may never read
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(_POLL_S, max(0.0, deadline - now))):
                await cut.wait()
