"""sd_notify: tell systemd when a service is ready, reloading or stopping (units with Type=notify).

systemd passes a unix datagram socket in $NOTIFY_SOCKET (a path, or an
abstract name written with a leading '@'); each message is a few
newline-separated KEY=VALUE lines. With Type=notify, `systemctl start` (and
whatever is ordered after the unit) waits for READY=1, so a proxy sends it
only once its listeners accept and a snapshot is in force, and the control
plane once its API listens with the store open: "active" then means "serving",
not "forked". Written by hand (a dozen lines) rather than with a library:
the protocol is that small and stable (sd_notify(3)).

Only the process systemd started speaks: a forked proxy worker inherits the
variable, and its words would be refused anyway (NotifyAccess=main). Outside
systemd ($NOTIFY_SOCKET unset) every call is a no-op.

A seamless restart (glassmesh/proxy/handover.py) moves the main process: the
old one, still main, says `MAINPID=<successor>` and `READY=1` in one message
(so NotifyAccess=main suffices, and systemd never sees the unit without a
ready main process), then says nothing more (`handed_to`). The successor
says nothing until then (`quiet`): systemd would refuse a word from a process
that is not yet the main one, and log it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

_MAIN_PID = os.getpid()
_failed = False  # said once: a broken socket must not fill the journal
_quiet = False  # not systemd's main process (not yet, or no longer): a successor of a seamless restart, or its predecessor


def notify(*fields: str) -> bool:
    """Send KEY=VALUE fields to $NOTIFY_SOCKET; False when there is none, or it cannot be reached (said once)."""
    global _failed
    where = os.environ.get("NOTIFY_SOCKET", "")
    if not where or os.getpid() != _MAIN_PID or _quiet:
        return False
    if where[0] == "@":
        addr = "\0" + where[1:]  # an abstract socket name
    elif where[0] == "/":
        addr = where
    else:  # vsock:... and the like: not for a service on this host
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(fields).encode())
        return True
    except OSError as e:
        if not _failed:
            print(f"glassmesh: cannot notify systemd at NOTIFY_SOCKET={where}: {e}", file=sys.stderr, flush=True)
            _failed = True
        return False


def ready(status: str = "") -> bool:
    """READY=1: start-up is complete (and, after RELOADING=1, the reload is over)."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping() -> bool:
    """STOPPING=1: a stop signal came; what follows is the drain, not a hang."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """RELOADING=1, with the CLOCK_MONOTONIC time systemd 253+ (Type=notify-reload) requires beside it."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def around_reload(reload: Callable[[], None]) -> Callable[[], None]:
    """`reload` (a SIGHUP handler) framed by RELOADING=1 and READY=1, whether it kept or swapped the config."""

    def run() -> None:
        reloading()
        try:
            reload()
        finally:
            ready()

    return run


def handed_to(pid: int, status: str) -> bool:
    """MAINPID=`pid` and READY=1: the successor is the service now; this process says nothing more."""
    sent = notify(f"MAINPID={pid}", "READY=1", f"STATUS={status}")
    quiet(True)
    return sent


def quiet(on: bool) -> None:
    """Say nothing (on) while this process is not systemd's main one; speak again (off) once it is."""
    global _quiet
    _quiet = on
