"""Taps: the exchanges this proxy finishes, as events, for `glassmesh tap` and `glassmesh capture`.

A tap costs nothing while nobody taps: there is no tap observer in
Runtime.observers, and Runtime.recording is empty, until the control plane
asks this host for one (ask kind "tap", proxy/asks.py). Then each serving
process holds a `Tap` per session: an observer that filters each finished
exchange and keeps an event for it, bounded (api/tap.py: RATE a second,
BUFFER between two polls; the rest is counted and reported as dropped).
The ask's handler polls every process (`query("tap", ...)`) every POLL_S and
streams what is new; when the operator goes away, or nobody polls a process
for IDLE_S (its supervisor restarted), the tap is removed and the process is
back to paying nothing.

Bodies and a capture's wire bytes come from the exchange's Recording
(http.py), made only while some tap asks for them; the bytes are decoded
here, off the request path, and only for events that are kept.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import time
from typing import Any

import httptools
import msgspec

from glassmesh.api.asks import MAX_ANSWER_BYTES, MAX_EVENTS
from glassmesh.api.tap import BUFFER, BUFFER_BYTES, RATE, SECRET_HEADERS, TapArgs
from glassmesh.proxy.log import log

POLL_S = 0.2  # how often the handler gathers each process's events
KEEPALIVE_S = 2.0  # an empty batch at least this often: how a tap hears that its operator left
IDLE_S = 10.0  # a process's tap that nobody polled for this long is removed
HEAD_ROOM = 16384  # recorded beyond --body N, for the head (and chunk sizes) before the body
BATCH_BYTES = MAX_ANSWER_BYTES * 3 // 4
EVENT_BYTES = 1024  # an event without bodies or wire bytes, roughly, for BUFFER_BYTES  # an answer post's events, encoded, stay under this


class Tap:
    """One tap session in one serving process: the observer (called per finished exchange) and its buffer."""

    def __init__(self, rt: Any, tap_id: str, args: TapArgs) -> None:
        self.rt = rt
        self.id = tap_id
        self.args = args
        self.events: list[dict[str, Any]] = []
        self.dropped = 0
        self.held = 0  # bytes the events held take, roughly (EVENT_BYTES each, and twice their recorded bytes)
        self.rate = float(args.rate or RATE)
        self.tokens = self.rate
        self.refilled = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None
        self.path = args.path.encode("latin-1")
        self.method = args.method.encode("latin-1")
        self.observer = self.observe  # the one bound method added to, and removed from, Runtime.observers

    @property
    def record_limit(self) -> int:
        """Bytes of each try's wire this tap needs kept, each way (0: none)."""
        a = self.args
        return max(a.body + HEAD_ROOM if a.body else 0, a.wire)

    def observe(self, ex: Any, status: int, reason: str) -> None:
        """The observer (Runtime.observers): keep an event for ex when it passes the filter and the bounds.

        A bound method, not __call__: the request path calls it through vectorcall, without the
        type-slot lookup a callable instance costs (about 4,000 instructions an exchange, callgrind).
        The cheapest tests come first, so that a narrow tap costs little on a busy host.
        """
        a = self.args
        if a.status and not a.status_matches(status):
            return
        if self.path and not ex.url.startswith(self.path):
            return
        if self.method and ex.method != self.method:
            return
        side = ex.conn.side
        if a.side and side.name != a.side:
            return
        dest = ex.service or getattr(side, "destination", "") or ""
        if a.destination and dest != a.destination:
            return
        r = ex.routed
        source = r.link.source if r is not None else getattr(side, "source", "")
        if a.source and source != a.source:
            return
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        rec = ex.rec
        size = EVENT_BYTES
        if rec is not None and (a.body or a.wire):
            size += (rec.kept_sent + rec.kept_got) * 2
        if self.tokens < 1.0 or len(self.events) >= BUFFER or self.held + size > BUFFER_BYTES:
            self.dropped += 1
            return
        self.tokens -= 1.0
        self.held += size
        self.events.append(self.event(ex, status, reason, side.name, source or "", dest, now))

    def event(self, ex: Any, status: int, reason: str, side: str, source: str, dest: str,
              now: float) -> dict[str, Any]:
        rt = self.rt
        rid = ex.request_id or (ex.head.rid if ex.head is not None else None) or b""
        ev: dict[str, Any] = {
            "ts": round(time.time(), 6), "host": rt.host, "pid": os.getpid(), "side": side, "from": source,
            "to": dest, "method": ex.method.decode("latin-1"), "path": ex.url.decode("latin-1"), "status": status,
            "duration_ms": round((now - ex.t0) * 1000, 3), "request_id": rid.decode("latin-1"),
        }
        if ex.attempts > 1:
            ev["attempts"] = ex.attempts
        route = ex.route
        if route is not None and (ex.subset or route.name != b"default"):
            ev["route"] = route.name.decode("latin-1")
            if ex.subset:
                ev["subset"] = ex.subset.decode("latin-1")
        r = ex.routed
        if r is not None:
            key = r.pool.key
            ev["endpoint"] = f"[{key.host}]:{key.port}" if ":" in key.host else f"{key.host}:{key.port}"
        up = ex.upstream
        rh = up.reader.rh if up is not None and ex.resp_started else None  # the head the codec read last
        if reason:
            ev["error"], ev["hop"] = reason, f"{rt.host}/{side}"
        elif rh is not None and rh.error is not None:
            err, _, hop = rh.error.decode("latin-1").partition(";")
            ev["error"], ev["hop"] = err.strip(), hop.strip().removeprefix("hop=")
        a = self.args
        if a.headers:
            # The end-to-end headers as the proxy sent them on (hop-by-hop and mesh-only ones are not).
            ev["request_headers"] = _pairs(ex.head.forward if ex.head is not None else [], a.secrets)
            if rh is not None:
                ev["response_headers"] = _response_headers(rh, a.secrets)
            elif reason:
                ev["response_headers"] = [["glassmesh-error", f"{reason}; hop={ev['hop']}"]]
        rec = ex.rec
        if rec is not None and (a.body or a.wire):
            if a.body:
                _bodies(ev, rec, a.body, ex.method == b"HEAD")
            if a.wire:
                ev["wire"] = _wire(rec, up, a.wire)
        return ev

    def drain(self) -> dict[str, Any]:
        """What this process kept (and dropped) since the last poll; the poll keeps the tap alive."""
        events, dropped = self.events, self.dropped
        self.events, self.dropped, self.held = [], 0, 0
        self._arm()
        return {"pid": os.getpid(), "events": events, "dropped": dropped}

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(IDLE_S, stop, self.rt, self.id)


def start(rt: Any, tap_id: str, args: TapArgs) -> Tap:
    tap = Tap(rt, tap_id, args)
    rt.taps[tap_id] = tap
    rt.observers.append(tap.observer)  # in place: every connection holds this very list
    _set_recording(rt)
    tap._arm()
    return tap


def stop(rt: Any, tap_id: str) -> bool:
    """Remove a tap; the last one out leaves no observer and no recording behind."""
    tap = rt.taps.pop(tap_id, None)
    if tap is None:
        return False
    if tap.timer is not None:
        tap.timer.cancel()
    with contextlib.suppress(ValueError):
        rt.observers.remove(tap.observer)
    _set_recording(rt)
    return True


def _set_recording(rt: Any) -> None:
    limit = max((t.record_limit for t in rt.taps.values()), default=0)
    rt.recording[:] = [limit] if limit else []


def process_route(rt: Any, params: dict[str, str]) -> dict[str, Any]:
    """PROCESS_ROUTES["tap"]: poll (starting the tap here if this process does not hold it yet) or stop.

    Every poll carries the whole filter, so a worker that started after the tap
    (a restarted one) joins it at its first poll.
    """
    tap_id = params.get("id", "")
    if not tap_id:
        raise ValueError("a tap poll needs its id")
    if params.get("op") == "stop":
        return {"pid": os.getpid(), "stopped": stop(rt, tap_id)}
    tap = rt.taps.get(tap_id)
    if tap is None:
        tap = start(rt, tap_id, TapArgs.parse(params))
    return tap.drain()


async def handle(args: dict[str, Any], emit: Any, query: Any) -> None:
    """HANDLERS["tap"]: poll every serving process and stream what they saw, until the asker leaves.

    Ends by itself (done) after `seconds` when the tap asked for a duration (a capture). Its start
    and end are logged: who looks at a host's traffic is worth a line in its log.
    """
    targs = TapArgs.parse({k: str(v) for k, v in args.items() if k != "host"})
    params = {**targs.query(), "id": secrets.token_hex(4)}
    params.pop("seconds", None)
    what = " ".join(f"{k}={v}" for k, v in params.items() if k != "id") or "everything"
    log(f"tap {params['id']}: started for an operator ({what})")
    t0 = last = time.monotonic()
    sent = dropped = 0
    told: set[str] = set()
    why = "the operator left"
    try:
        while True:
            batch: list[dict[str, Any]] = []
            for ans in await query("tap", params):
                if not isinstance(ans, dict) or "error" in ans:
                    err = str(ans.get("error") if isinstance(ans, dict) else ans)
                    if err not in told:  # a worker that cannot answer is said once, not every poll
                        told.add(err)
                        batch.append({"error": err})
                    continue
                batch.extend(ans["events"])
                if ans["dropped"]:
                    dropped += ans["dropped"]
                    batch.append({"dropped": ans["dropped"], "pid": ans["pid"], "ts": time.time()})
            batch.sort(key=lambda e: e.get("ts", 0.0))
            now = time.monotonic()
            if batch or now - last >= KEEPALIVE_S:
                last = now
                for part in batches(batch):
                    if not await emit(part):
                        return
                    sent += len(part)
            if targs.seconds and now - t0 >= targs.seconds:
                why = f"its {targs.seconds:g} s were up"
                return
            await asyncio.sleep(POLL_S)
    except Exception as e:
        why = f"{type(e).__name__}: {e}"
        raise
    finally:
        with contextlib.suppress(Exception):
            await query("tap", {"id": params["id"], "op": "stop"})
        log(f"tap {params['id']}: ended, {why}; {sent} line(s) sent, {dropped} exchange(s) dropped")


def batches(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Events in posts the control plane takes (api/asks.py: MAX_EVENTS and MAX_ANSWER_BYTES each); [[]] for none."""
    out: list[list[dict[str, Any]]] = [[]]
    size = 0
    for ev in events:
        n = len(msgspec.json.encode(ev))
        if out[-1] and (size + n > BATCH_BYTES or len(out[-1]) >= MAX_EVENTS):
            out.append([])
            size = 0
        out[-1].append(ev)
        size += n
    return out


# --- decoding, for events that are kept -----------------------------------------------------------


def _pairs(flat: list[bytes], show_secrets: bool = False) -> list[list[str]]:
    out = [[flat[i].decode("latin-1"), flat[i + 1].decode("latin-1")] for i in range(0, len(flat) - 1, 2)]
    if not show_secrets:
        for pair in out:
            if pair[0].lower() in SECRET_HEADERS:
                pair[1] = f"[redacted: {len(pair[1])} bytes]"
    return out


def _response_headers(rh: Any, show_secrets: bool) -> list[list[str]]:
    """The next hop's response headers: those passed on, then the ones the proxy handles itself."""
    out = _pairs(rh.forward, show_secrets)
    for name, value in (("content-length", rh.cl), ("transfer-encoding", rh.te), ("glassmesh-trail", rh.trail)):
        if value is not None:
            out.append([name, value.decode("latin-1")])
    return out


class _Collect:
    """httptools callbacks that keep the body of the final message (after any 1xx)."""

    def __init__(self, request: bool) -> None:
        self.parser: Any = httptools.HttpRequestParser(self) if request else httptools.HttpResponseParser(self)
        self.request = request
        self.parts: list[bytes] = []
        self.final = request
        self.done = False

    def on_headers_complete(self) -> None:
        self.parts = []
        self.final = self.request or self.parser.get_status_code() >= 200

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)

    def on_message_complete(self) -> None:
        if self.final:
            self.done = True


def body_of(data: bytes, request: bool, head: bool = False) -> tuple[bytes, bool]:
    """(body, complete) of the HTTP/1 message at the start of `data`, chunked framing undone.

    head: the response to a HEAD request, which has no body whatever its head says.
    """
    if head and not request:
        return b"", True
    if request and data.endswith(b"\r\n\r\n") and data.find(b"\r\n\r\n") == len(data) - 4:
        return b"", True  # a head alone (most requests): no parser to make
    c = _Collect(request)
    with contextlib.suppress(httptools.HttpParserError):
        c.parser.feed_data(data)
    return b"".join(c.parts), c.done


def _bodies(ev: dict[str, Any], rec: Any, limit: int, head: bool) -> None:
    sent = b"".join(d for _, out, d in rec.chunks if out)
    got = b"".join(d for _, out, d in rec.chunks if not out)
    for key, data, request, more in (("request_body", sent, True, rec.more_sent),
                                     ("response_body", got, False, rec.more_got)):
        body, complete = body_of(data, request, head)
        if body:
            ev[key] = body[:limit].decode("utf-8", "backslashreplace")
        if len(body) > limit or (body and (more or not complete)):
            ev[key + "_truncated"] = True


def _wire(rec: Any, up: Any, limit: int) -> dict[str, Any]:
    local = None
    if up is not None and up.transport is not None:
        with contextlib.suppress(Exception):
            local = up.transport.get_extra_info("sockname")
    return {
        "conn": id(up) if up is not None else 0,
        "local": list(local[:2]) if isinstance(local, tuple) else None,
        "limit": limit,
        "chunks": [[round(t, 6), "out" if out else "in", base64.b64encode(d).decode()] for t, out, d in rec.chunks],
        "more_out": rec.more_sent, "more_in": rec.more_got, "t_last": round(rec.t_last, 6),
    }
