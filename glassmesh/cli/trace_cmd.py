"""`glassmesh trace REQUEST_ID`: one request across every hop, where its time went and which hop failed it."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import click
from rich.text import Text

from glassmesh.cli._control_client import call, control_option, expect_ok, out
from glassmesh.cli.output import emit, output_option, utc

BAR = 32  # characters of the widest bar (the first hop's whole time)


@click.command()
@click.argument("request_id")
@click.option("--host", "host", default=None, metavar="HOST",
              help="The caller's host, where the trace starts. Needed only for an id an app made itself: "
                   "an id a proxy minted (x-request-id in every response) names its host.")
@output_option(formats=("table", "json", "yaml"))
@control_option
def trace(request_id: str, host: str | None, output: str, control: str) -> None:
    """One request's timeline across the proxies it crossed: each hop, where the time went, which hop made the error.

    REQUEST_ID is the x-request-id of the response (or a trace id). The control plane asks only the
    proxies on the request's path, starting at the caller's host; each proxy keeps its most recent
    requests (failures longest), so trace a request soon after it ran. No tracing backend needed.
    """
    path = f"/v1/trace/{quote(request_id, safe='')}" + (f"?{urlencode({'host': host})}" if host else "")
    doc = expect_ok(*call(control, "GET", path))
    emit(doc, output, lambda: print_timeline(doc))


def _ms(x: float) -> str:
    return f"{x:.1f} ms" if x >= 10 else f"{x:.2f} ms"


def _bar(offset: float, length: float, total: float, style: str) -> Text:
    scale = BAR / total if total > 0 else 0.0
    start = min(BAR - 1, int(offset * scale))
    width = max(1, round(length * scale))
    t = Text(" " * start)
    t.append("█" * min(width, BAR - start), style=style)
    return t


def print_timeline(doc: dict[str, Any]) -> None:
    tl = doc["timeline"]
    hops = tl["hops"]
    first = hops[0] if hops else {}
    total = float(tl.get("total_ms") or 0.0)
    head = Text(f"request {doc['id']}", style="bold")
    if first:
        head.append(f"  {first.get('method', '')} {first.get('path', '')}  {first.get('source')} -> "
                    f"{first.get('destination')}  {first.get('status')} in {_ms(total)}  at {utc(first.get('start'))}")
        if first.get("trace_id"):
            head.append(f"\ntrace {first['trace_id']}", style="dim")
    out.print(head)
    out.print()
    rows: list[tuple[str, str, str, Text, str]] = []
    for h in hops:
        failed = h.get("mesh_error") or int(h.get("status") or 0) >= 500
        style = "red" if failed else "cyan"
        label = f"{h['host']} {h['side']}"
        status = str(h.get("status", ""))
        if h.get("mesh_error"):
            status += f" {h['mesh_error']}"
        if h.get("attempts", 1) > 1:
            status += f" ({h['attempts']} tries)"
        parts = " · ".join(f"{what} {_ms(ms)}" for what, ms in h["phases"] if ms or what.startswith("waiting"))
        rows.append((f"+{_ms(h['offset_ms'])}", label, status, _bar(h["offset_ms"], h["total_ms"], total, style),
                     f"{_ms(h['total_ms'])}  {parts}"))
        if h.get("side") == "inbound" and h.get("upstream_head_ms") is not None:
            app_off = h["offset_ms"] + (h.get("before_send_ms") or 0.0)
            rows.append((f"+{_ms(app_off)}", f"app {h.get('destination')}", "",
                         _bar(app_off, h["upstream_head_ms"], total, "yellow"),
                         f"{_ms(h['upstream_head_ms'])}  until its response head"))
    widths = [max(len(r[i]) for r in rows) if rows else 0 for i in range(3)]
    for start, label, status, bar, rest in rows:
        line = Text(f"  {start:>{widths[0]}}  {label:<{widths[1]}}  {status:<{widths[2]}}  ")
        line.append_text(bar)
        line.append(" " * (BAR - bar.cell_len + 2) + rest)
        out.print(line)
    out.print()
    slow = tl.get("slowest")
    if slow:
        out.print(f"where the time went: {slow['what']}, {_ms(slow['ms'])} of {_ms(total)} "
                  f"({slow['share'] * 100:.0f}%)")
    err = tl.get("error")
    if err:
        out.print(Text(f"error made by {err['hop']}: {err['reason']} ({err['status']})"
                       + (f": {err['message']}" if err.get("message") else ""), style="red"))
    for r in tl.get("retried", []):
        out.print(Text(f"a try failed and was made again: {r}", style="yellow"))
    for p in doc.get("problems", []):
        out.print(Text(f"no records from {p['host']}: {p['error']}", style="yellow"))
    out.print(Text(f"asked {', '.join(doc.get('hosts_asked', []))}", style="dim"))
