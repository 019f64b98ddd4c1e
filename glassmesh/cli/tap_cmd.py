"""`glassmesh tap` and `glassmesh capture`: the mesh's traffic, decoded, as it crosses the proxies.

Both read `GET /v1/tap` (control/tap_api.py), a stream of one JSON event a
line (api/tap.py), with the operator credential. `tap` prints each exchange
as it ends; `capture` keeps a link's exchanges with their bytes for some
seconds and writes them as a pcap of ordinary TCP flows (tools/capture.py).
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import click
from rich.text import Text

from glassmesh.api import credential
from glassmesh.api.tap import MAX_BODY, MAX_WIRE, RATE, dropped_line
from glassmesh.cli._control_client import (
    LocalProblem,
    Refused,
    Unreachable,
    control_option,
    control_urls,
    err,
    operator_credential,
    out,
)
from glassmesh.files import write_private

READ_TIMEOUT_S = 30.0  # the control plane writes at least a keep-alive line every 2 s


def stream(control: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The events of `GET /v1/tap?query` from the first replica that takes it, as they come."""
    cred = operator_credential()
    path = "/v1/tap?" + urllib.parse.urlencode(query)
    errors: list[str] = []
    for base in control_urls(control):
        try:
            conn, prefix = credential.connect(base, cred, READ_TIMEOUT_S)
        except credential.CredentialError as e:
            errors.append(str(e))
            continue
        except ssl.SSLError as e:
            errors.append(f"TLS with the control plane at {base} failed: {e.reason or e}")
            continue
        except OSError as e:
            errors.append(f"cannot reach the control plane at {base}: {e.strerror or e}")
            continue
        try:
            conn.request("GET", prefix + path, headers={"accept": "application/x-ndjson"})
            resp = conn.getresponse()
            if resp.status >= 500:
                errors.append(_error_of(resp, base))
                continue
            if resp.status >= 400:
                raise Refused(_error_of(resp, base))
            yield from _lines(resp)
            return
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"the tap stream from {base} broke: {e}") from None
        finally:
            conn.close()
    raise Unreachable("; ".join(errors))


def _error_of(resp: http.client.HTTPResponse, base: str) -> str:
    body = resp.read()
    try:
        return str(json.loads(body).get("error") or f"{base} answered HTTP {resp.status}")
    except ValueError:
        return f"{base} answered HTTP {resp.status}"


def _lines(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield json.loads(line)


def tap_query(host: str | None, source: str | None, dest: str | None, path: str | None, status: str | None,
              side: str | None, method: str | None, headers: bool, body: int, wire: int = 0,
              seconds: float = 0.0) -> dict[str, str]:
    q = {"host": host, "from": source, "to": dest, "path": path, "status": status, "side": side, "method": method,
         "headers": "1" if headers else None, "body": str(body) if body else None,
         "wire": str(wire) if wire else None, "seconds": f"{seconds:g}" if seconds else None}
    return {k: v for k, v in q.items() if v}


# --- tap -------------------------------------------------------------------------------------------


def _status_style(status: int, error: str | None) -> str:
    if error or status >= 500:
        return "bold red"
    return "yellow" if status >= 400 else "green"


def render(ev: dict[str, Any]) -> list[Text]:
    """One exchange as people read it: a line, then its headers and bodies when the tap asked for them."""
    t = time.gmtime(ev.get("ts", 0))
    ms = int((ev.get("ts", 0) % 1) * 1000)
    line = Text(f"{time.strftime('%H:%M:%S', t)}.{ms:03d}Z ", style="dim")
    line.append(f"{ev.get('host')}/{ev.get('side')} ", style="cyan")
    line.append(f"{ev.get('from') or '?'} -> {ev.get('to') or '?'} ")
    line.append(f"{ev.get('method')} {ev.get('path')} ", style="bold")
    status = int(ev.get("status", 0))
    line.append(str(status), style=_status_style(status, ev.get("error")))
    line.append(f" {ev.get('duration_ms', 0):.1f}ms")
    extras = []
    if ev.get("attempts"):
        extras.append(f"attempts={ev['attempts']}")
    if ev.get("route"):
        extras.append(f"route={ev['route']}" + (f" subset={ev['subset']}" if ev.get("subset") else ""))
    if ev.get("endpoint"):
        extras.append(f"-> {ev['endpoint']}")
    if ev.get("request_id"):
        extras.append(f"id={ev['request_id']}")
    if extras:
        line.append("  " + "  ".join(extras), style="dim")
    if ev.get("error"):
        line.append(f"  error={ev['error']} hop={ev.get('hop', '?')}", style="red")
    lines = [line]
    for key, mark in (("request_headers", "> "), ("response_headers", "< ")):
        for name, value in ev.get(key, ()):
            lines.append(Text(f"    {mark}{name}: {value}", style="dim"))
    for key, mark in (("request_body", "> "), ("response_body", "< ")):
        if key in ev:
            more = " [truncated]" if ev.get(key + "_truncated") else ""
            lines.append(Text(f"    {mark}{ev[key]!r}{more}"))
    return lines


@click.command("tap")
@click.option("--host", help="Tap these hosts' proxies only (comma-separated) [default: the hosts the filter "
                             "names by service, else every connected host].")
@click.option("--from", "source", metavar="SERVICE", help="Only calls made by this service.")
@click.option("--to", "dest", metavar="SERVICE", help="Only calls to this service.")
@click.option("--path", metavar="PREFIX", help="Only requests whose path starts with this.")
@click.option("--status", metavar="CODE", help="Only these statuses: 503, or a class: 5xx.")
@click.option("--side", type=click.Choice(["outbound", "inbound"]),
              help="Only the caller's proxy (outbound) or the callee's (inbound) [default: both].")
@click.option("--method", help="Only this method (GET, POST, ...).")
@click.option("--headers", is_flag=True, help="Show request and response headers.")
@click.option("--show-secrets", is_flag=True,
              help="With --headers: show the values of Authorization, Cookie, Set-Cookie, Proxy-Authorization and "
                   "X-Api-Key [default: their size only].")
@click.option("--body", type=click.IntRange(0, MAX_BODY), default=0, metavar="N",
              help=f"Show the first N bytes of each body (at most {MAX_BODY}) [default: no bodies].")
@click.option("--rate", type=click.IntRange(1, RATE), metavar="N",
              help=f"Show at most N exchanges a second from each proxy process (at most {RATE}, the default); "
                   "the rest are counted and shown as 'not shown' lines.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many exchanges.")
@click.option("--seconds", type=click.FloatRange(0, 86400), default=0, help="Stop after this long [default: ^C].")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="table: one line per exchange, for people; json: one JSON object per line (NDJSON).")
@control_option
def tap(control: str, host: str | None, source: str | None, dest: str | None, path: str | None,
        status: str | None, side: str | None, method: str | None, headers: bool, show_secrets: bool, body: int,
        rate: int | None, count: int | None, seconds: float, output: str) -> None:
    """Show requests and responses live as they cross the proxies (needs an operator credential).

    Each exchange shows once per proxy that carried it: at the caller's proxy (outbound) and at the
    callee's (inbound). Bodies only with --body; what a proxy could not keep up with is counted and
    shown as "not shown" lines.
    """
    q = tap_query(host, source, dest, path, status, side, method, headers, body, seconds=seconds)
    if rate:
        q["rate"] = str(rate)
    if show_secrets:
        q["secrets"] = "1"
    deadline = time.monotonic() + seconds if seconds else None
    seen = 0
    try:
        for ev in stream(control, q):
            if output == "json":
                sys.stdout.write(json.dumps(ev, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            elif "tap" in ev:
                info = ev["tap"]
                err.print(Text(f"tapping {', '.join(info['hosts'])}"
                               + (f" (not connected: {', '.join(info['not_connected'])})"
                                  if info.get("not_connected") else "") + "; ^C to stop", style="dim"))
            elif "dropped" in ev:
                err.print(Text(dropped_line(ev, rate or 0), style="yellow"))
            elif "error" in ev and "method" not in ev:
                err.print(Text(f"{ev.get('host')}: {ev['error']}", style="red"))
            else:
                for line in render(ev):
                    out.print(line)
            if "method" in ev:
                seen += 1
                if count is not None and seen >= count:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return
    except KeyboardInterrupt:
        return


# --- capture ---------------------------------------------------------------------------------------


@click.command("capture")
@click.option("--link", required=True, metavar="FROM:TO", help="The link to capture: caller and callee services.")
@click.option("--seconds", type=click.FloatRange(0.1, 3600), default=10, show_default=True,
              help="How long to capture.")
@click.option("-w", "--write", "path", required=True, type=click.Path(dir_okay=False),
              help="The pcap file to write (0600: it holds the link's plaintext).")
@click.option("--snap", type=click.IntRange(1, MAX_WIRE), default=65536, show_default=True, metavar="BYTES",
              help=f"Bytes kept of each exchange, each way (at most {MAX_WIRE}); the rest is counted, as "
                   "tcpdump's -s does.")
@click.option("--host", help="Capture at these hosts' proxies only (comma-separated) [default: every host "
                             "that runs the calling service].")
@control_option
def capture(control: str, link: str, seconds: float, path: str, snap: int, host: str | None) -> None:
    """Write a pcap of what a link carried, decrypted: tcpdump for the mesh.

    The caller's proxies record each exchange's HTTP/1 bytes as they went to the callee's proxy and
    came back (the plaintext inside the mTLS), and this writes them as TCP flows that tcpdump -A,
    tshark and Wireshark open as ordinary HTTP. Needs an operator credential.
    """
    source, sep, dest = link.partition(":")
    if not sep or not source or not dest:
        raise LocalProblem(f"--link {link!r}: give it as FROM:TO, e.g. --link web:api")
    q = tap_query(host, source, dest, None, None, "outbound", None, False, 0, wire=snap, seconds=seconds)
    events: list[dict[str, Any]] = []
    hosts: list[str] = []
    deadline = time.monotonic() + seconds + 10.0  # the control plane ends the stream after `seconds`
    err.print(Text(f"capturing {source} -> {dest} for {seconds:g}s ...", style="dim"))
    try:
        for ev in stream(control, q):
            if "tap" in ev:
                hosts = ev["tap"]["hosts"]
            elif "dropped" in ev:
                err.print(Text(dropped_line(ev), style="yellow"))
            elif "error" in ev and "method" not in ev:
                err.print(Text(f"{ev.get('host')}: {ev['error']}", style="red"))
            else:
                events.append(ev)
            if time.monotonic() >= deadline:
                break
    except KeyboardInterrupt:
        pass
    from glassmesh.tools.capture import pcap_of

    data, summary = pcap_of(events)
    try:
        write_private(path, data)
    except OSError as e:
        raise LocalProblem(f"cannot write {path}: {e.strerror or e}") from None
    cut = f"; {summary.bytes_cut} bytes past --snap counted, not kept" if summary.bytes_cut else ""
    if summary.without_wire:
        cut += (f"; {summary.without_wire} exchange(s) with no bytes to show (a mesh error before anything was "
                f"sent, or under way when the capture began: `glassmesh tap` shows them)")
    out.print(f"wrote {path}: {summary.exchanges} exchange(s) in {summary.flows} TCP flow(s) from "
              f"{', '.join(sorted(summary.hosts or set(hosts))) or 'no host'}, {summary.bytes_kept} bytes{cut}")
    out.print(Text(f"read it with: tcpdump -r {path} -A   or   tshark -r {path} -Y http", style="dim"))
