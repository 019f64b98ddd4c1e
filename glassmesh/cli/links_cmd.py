"""`glassmesh links [--watch]`: every link of the mesh (source service -> destination service), worst first.

The control plane asks each connected proxy for its link counters and turns
them into rates (control/links.py, `GET /v1/links`); this prints them. With
`--watch` it asks again every `--interval` seconds and redraws in place
(rich Live), so the rates are over that interval.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from glassmesh.cli._control_client import call, control_option, expect_ok, out
from glassmesh.cli.output import emit, output_option, utc


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _success(r: dict[str, Any]) -> Text:
    s = r["success"]
    if s is None:
        return Text("-")
    style = "green" if s >= 0.999 else "yellow" if s >= 0.95 else "bold red"
    return Text(f"{s * 100:.2f}%" if s < 1 else "100%", style=style)


def _retries(r: dict[str, Any]) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(r["retries"].items())) or "-"


def _errors(r: dict[str, Any]) -> str:
    return "; ".join(f"{hop}: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
                     for hop, reasons in sorted(r["mesh_errors"].items())) or "-"


def _rate(r: dict[str, Any]) -> str:
    v = r["rate_rps"]
    if v is None:
        return "-"
    unit = "conn/s" if r["protocol"] == "tcp" else "/s"
    return f"{v:.1f}{unit}" if v < 1000 else f"{v:.0f}{unit}"


def render(doc: dict[str, Any]) -> Group:
    """The table (worst link first), the matrix of success by source and destination, and who was not asked."""
    t = Table(box=None, pad_edge=False, title_justify="left",
              title=f"links at {utc(doc['at'])} ({len(doc['hosts'])} proxies asked; worst first)")
    for col in ("source", "destination", "rate", "success", "p50 ms", "p99 ms", "mTLS", "retries", "mesh errors by hop"):
        t.add_column(col, justify="right" if col in ("rate", "success", "p50 ms", "p99 ms") else "left")
    for r in doc["links"]:
        mtls = Text(r["mtls"] or "no", style="" if r["mtls"] else "bold red")
        t.add_row(r["source"], r["destination"], _rate(r), _success(r), _ms(r["p50_ms"]), _ms(r["p99_ms"]), mtls,
                  _retries(r), _errors(r))
    parts: list[Any] = [t]
    grid = _grid(doc["links"])
    if grid is not None:
        parts.append(grid)
    for host, why in sorted(doc.get("missing", {}).items()):
        parts.append(Text(f"not asked: {host}: {why}", style="yellow"))
    if not doc["links"]:
        parts.append(Text("no link has carried anything since these proxies started"))
    return Group(*parts)


MAX_GRID = 12  # services; past that the list above is the readable form


def _grid(rows: list[dict[str, Any]]) -> Table | None:
    """The N x N matrix: a row per source, a column per destination, each cell its success and rate."""
    sources = sorted({r["source"] for r in rows})
    dests = sorted({r["destination"] for r in rows})
    if not rows or len(sources) > MAX_GRID or len(dests) > MAX_GRID:
        return None
    cell = {(r["source"], r["destination"]): r for r in rows}
    g = Table("from \\ to", *dests, box=None, pad_edge=False, title="matrix (success, rate)", title_justify="left")
    for s in sources:
        cells: list[Any] = [s]
        for d in dests:
            r = cell.get((s, d))
            if r is None:
                cells.append(Text("·", style="dim"))
            else:
                c = _success(r)
                c.append(f" {_rate(r)}", style="")
                cells.append(c)
        g.add_row(*cells)
    return g


def fetch(control: str, window: float) -> dict[str, Any]:
    return expect_ok(*call(control, "GET", "/v1/links", timeout=30))


@click.command()
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(1.0, 3600.0), default=2.0, show_default=True,
              help="Seconds between two looks with --watch (the rates are over it).")
@output_option()
@control_option
def links(watch: bool, interval: float, output: str, control: str) -> None:
    """Every link (source -> destination service): rate, success, p50/p99, mTLS, retries, mesh errors by hop.

    Worst links first: the lowest success, then the slowest p99. The counters
    come from each connected proxy through the control plane; a proxy that
    could not be asked is named below the table.
    """
    if not watch:
        doc = fetch(control, interval)
        emit(doc, output, lambda: out.print(render(doc)))
        return
    if output != "table":
        while True:  # one document per look, for a script that reads a stream
            emit(fetch(control, interval), output, lambda: None)
            time.sleep(interval)
    with Live(render(fetch(control, interval)), console=out, auto_refresh=False, screen=False) as live:
        while True:
            time.sleep(interval)
            live.update(render(fetch(control, interval)), refresh=True)
