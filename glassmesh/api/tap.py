"""What a tap asks for and what it gets back: shared by the CLI, the control plane and the proxy.

`glassmesh tap` and `glassmesh capture` are one ask kind, "tap" (api/asks.py):
the control plane asks each matching host's proxy, and each proxy streams
the exchanges its processes finish that pass the filter. One event per
exchange per side: a call from A to B shows twice, at A's outbound proxy and
at B's inbound one, each saying which.

An event (JSON object):

    ts             wall time the exchange finished (seconds)
    host, side     the proxy that saw it ("outbound": a local app's call; "inbound": a peer's)
    pid            the serving process (one per --workers)
    from, to       caller and callee services
    method, path, status, duration_ms, request_id
    attempts       tries (the first included), when more than one
    route, subset  the route that served it (outbound; not for the default route)
    endpoint       host:port the last try went to
    error, hop     a mesh error's reason and the proxy that made it ("b/inbound")
    request_headers, response_headers     [[name, value], ...]: only with --headers; the values of
                   SECRET_HEADERS are "[redacted: N bytes]" unless `secrets` is asked
    request_body, response_body           text, at most --body N bytes: only with --body
    request_body_truncated, response_body_truncated   true when more was sent than shown
    wire           a capture's bytes (below): only when asked for (`wire=N`)

Other lines of the stream: `{"dropped": N, "host": H, "pid": P}` (events a
process counted but did not keep: over RATE a second or BUFFER between two
polls), `{"tap": {...}}` first (which hosts are tapped, which could not be),
and `{"error": ..., "host": H}` for a host whose proxy failed.

`wire` (capture): {"conn": id of the upstream connection, "chunks": [[ts,
"out"|"in", base64], ...], "more_out": N, "more_in": N, "t_last": ts}: the
HTTP/1 bytes of the exchange's last try, as they went to the next hop and
came back, the first `wire` bytes each way; more_* count what was not kept.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

MAX_BODY = 65536  # --body N is capped here: a tap shows messages, it is not a download
# A capture keeps at most this much of each exchange, each way: an event (base64) must fit in one
# answer post to the control plane (api/asks.py MAX_ANSWER_BYTES, 1 MiB).
MAX_WIRE = 256 * 1024
BUFFER = 1000  # events held per tap in each proxy process between two polls
# ... and their bytes: a capture's events carry up to 2 x 256 KiB each, and a proxy must not hold 1,000.
BUFFER_BYTES = 16 << 20
RATE = 200  # events a second per tap in each proxy process; more are counted as dropped
SIDES = ("outbound", "inbound")
# Headers that carry credentials: a tap shows their size, not their value, unless asked (--show-secrets).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
_STATUS = re.compile(r"^[1-5](xx|[0-9]{2})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")


class TapArgsError(ValueError):
    """A tap's arguments that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class TapArgs:
    """A tap's filter and what each event carries; parsed from query strings (all values are strings)."""

    source: str = ""  # --from
    destination: str = ""  # --to
    path: str = ""  # a prefix of the request path
    status: str = ""  # "5xx", "503"
    side: str = ""  # "outbound", "inbound", or both
    method: str = ""
    headers: bool = False
    body: int = 0  # bytes of each body to show (0: none)
    wire: int = 0  # bytes of each exchange's wire to keep, each way (a capture)
    rate: int = 0  # events a second kept per proxy process (0: RATE, the most)
    secrets: bool = False  # credential headers' values shown (else each is "[redacted: N bytes]")
    seconds: float = 0.0  # 0: until the asker leaves

    @classmethod
    def parse(cls, q: dict[str, str]) -> TapArgs:
        """From `from`, `to`, `path`, `status`, `side`, `method`, `headers`, `body`, `wire`, `rate`, `seconds`."""
        known = {"from", "to", "path", "status", "side", "method", "headers", "body", "wire", "rate", "seconds",
                 "secrets", "host", "id", "op"}
        unknown = sorted(set(q) - known)
        if unknown:
            raise TapArgsError(f"unknown tap argument(s): {', '.join(unknown)}")
        for k in ("from", "to"):
            v = q.get(k, "")
            if v and not _NAME.match(v):
                raise TapArgsError(f"{k}: {v!r} is not a service name")
        status = q.get("status", "").lower()
        if status and not _STATUS.match(status):
            raise TapArgsError(f"status: {status!r} is not a status (503) or a class (5xx)")
        side = q.get("side", "")
        if side and side not in SIDES:
            raise TapArgsError(f"side: {side!r} is not one of {', '.join(SIDES)}")
        path = q.get("path", "")
        if path and not path.startswith("/"):
            raise TapArgsError(f"path: {path!r} must start with /")
        return cls(source=q.get("from", ""), destination=q.get("to", ""), path=path, status=status, side=side,
                   method=q.get("method", "").upper(), headers=_flag(q, "headers"), secrets=_flag(q, "secrets"),
                   body=_number(q, "body", MAX_BODY), wire=_number(q, "wire", MAX_WIRE),
                   rate=_number(q, "rate", RATE), seconds=_number(q, "seconds", 86400, clamp=False, parse=float))

    def query(self) -> dict[str, str]:
        """The inverse of parse: only what differs from the defaults."""
        names = {"source": "from", "destination": "to"}
        out: dict[str, str] = {}
        for k, v in asdict(self).items():
            if v in ("", 0, 0.0, False):
                continue
            out[names.get(k, k)] = "1" if v is True else f"{v:g}" if isinstance(v, float) else str(v)
        return out

    def status_matches(self, status: int) -> bool:
        s = self.status
        if not s:
            return True
        if s.endswith("xx"):
            return status // 100 == int(s[0])
        return status == int(s)


def _flag(q: dict[str, str], key: str) -> bool:
    return q.get(key, "") in ("1", "true", "yes")


def _number(q: dict[str, str], key: str, high: float, clamp: bool = True, parse: type = int) -> Any:
    """q[key] as a number from 0 to high (0 when absent): above high it is high (clamp) or refused."""
    v = q.get(key, "")
    if not v:
        return parse(0)
    try:
        n = parse(v)
    except ValueError:
        raise TapArgsError(f"{key}: {v!r} is not a number") from None
    if n < 0:
        raise TapArgsError(f"{key}: {v} is negative")
    if n > high:
        if not clamp:
            raise TapArgsError(f"{key}: {v} is more than {high:g}")
        return parse(high)
    return n


def dropped_line(ev: dict[str, Any], rate: int = 0) -> str:
    """What a `dropped` line means, in words."""
    if ev.get("host") == "control plane":
        return f"{ev['dropped']} exchange(s) not shown: this reader fell behind the control plane"
    return (f"{ev['dropped']} exchange(s) at {ev.get('host', '?')} (pid {ev.get('pid', '?')}) not shown: "
            f"over {rate or RATE} a second, or more than {BUFFER} ({BUFFER_BYTES >> 20} MB) between two polls")
