"""`glassmesh status`, `release` and `drain`: what the control plane pushes, what it holds back, and why."""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from glassmesh.cli._control_client import call, control_option, expect_ok, out
from glassmesh.cli.output import FORMATS, emit, utc


def _age(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


REASON_WIDTH = 80  # the last-reject column at most, "v12: " included
REASON_MIN = 24  # ... and at least, on a terminal too narrow for the rest


def _one_line(reason: str) -> str:
    """A reason with its line breaks made spaces: one reject, one line."""
    return " ".join(str(reason).split())


def _reject_cell(h: dict[str, Any]) -> Text:
    """The host's last reject while it still matters; once it runs a newer version, only that it happened."""
    rej = h.get("last_reject")
    if not rej:
        return Text("")
    if rej.get("past"):
        return Text(f"v{rej['version']} rejected earlier", style="dim")
    n = h.get("rejects", 0)
    return Text(f"v{rej['version']}" + (f" ({n} rejects in all)" if n > 1 else "") + f": {_one_line(rej['reason'])}",
                style="yellow")


def _one_line_rows(header: list[str], rows: list[list[Text]], width: int) -> list[Text]:
    """A table whose rows never wrap: every column as wide as its widest cell, the last one cut to fit.

    A host's row must stay one line however long a reject reason is (the
    list below the table has it whole); a narrow terminal cuts the reason, not
    the host name or the versions.
    """
    widths = [max([len(name), *(r[i].cell_len for r in rows)]) for i, name in enumerate(header[:-1])]
    room = max(REASON_MIN, min(REASON_WIDTH, width - sum(w + 2 for w in widths) - 1))
    lines = []
    for cells in [[Text(x) for x in header], *rows]:
        line = Text(" ")
        for cell, w in zip(cells, widths, strict=False):
            line.append_text(cell)
            line.append(" " * (w - cell.cell_len + 2))
        last = cells[-1]
        if last.cell_len > room:
            last = last[: room - 1]
            last.append("…")
        line.append_text(last)
        line.rstrip()
        lines.append(line)
    return lines


def _print_status(doc: dict[str, Any]) -> None:
    out.print(f"config version {doc['config_version']}  store revision {doc['revision']}  "
              f"answered by replica {doc['replica']}")
    if doc.get("compile_error"):
        out.print(Text(f"compile error: {doc['compile_error']}", style="red"))
    replicas = ", ".join(f"{r['id']} ({r.get('listen') or '?'})" for r in doc["replicas"]) or "none"
    out.print(f"replicas: {replicas}")
    out.print("hosts")
    rows = [[Text(h["name"]), Text(str(h["running"] or "-"), style="green" if h["in_sync"] else "yellow"),
             Text(str(h["latest"])), Text(_age(h["snapshot_age_s"])), Text(_age(h["last_seen_s"])), _reject_cell(h)]
            for h in doc["hosts"]]
    for line in _one_line_rows(["host", "running", "latest", "snapshot age", "last seen", "last reject"], rows,
                               out.width):
        out.print(line)
    _print_proxies(doc["hosts"])
    recent = [(r["at"], h, r) for h in doc["hosts"] for r in h.get("recent_rejects", [])]
    if recent:
        out.print(Text("recent rejects (newest last; `glassmesh status -o json` has the last 10 per host):",
                       style="bold yellow"))
        for _, h, r in sorted(recent, key=lambda x: x[0])[-10:]:
            line = f"  {h['name']} refused v{r['version']}: {_one_line(r['reason'])}"
            if r.get("past"):
                out.print(Text(f"{line} (past: it runs v{h['running']} now)", style="dim"))
            else:
                out.print(Text(line, style="yellow"))
    slow = [h for h in doc["hosts"] if h.get("hot_path") not in (None, "mypyc")]
    if slow:
        out.print(Text("hosts whose proxy runs its request path interpreted or stale (slower, or not the code "
                       "installed; its /ready names the modules):", style="bold red"))
        for h in slow:
            out.print(Text(f"  {h['name']}: hot path {h['hot_path']}", style="red"))
    if doc["held"]:
        out.print(Text("held changes (glassmesh release SERVICE lets one through):", style="bold yellow"))
        for h in doc["held"]:
            out.print(Text(f"  {h['service']}: {h['cause']} (held {_age(h['since_s'])})", style="yellow"))
    else:
        out.print("held changes: none")
    if doc["drained"]:
        out.print(f"drained: {', '.join(doc['drained'])}")
    if doc["unhealthy"]:
        out.print(Text("unhealthy instances:", style="bold red"))
        for i in doc["unhealthy"]:
            out.print(Text(f"  {i['service']} {i['host']}/{i['address']}: {i['detail']}", style="red"))
    budget = doc["outage_budget"]
    out.print(f"outage budget: {budget['text']}" + ("" if budget["seconds"] is None else
                                                    f" (earliest certificate expiry {utc(budget['earliest_cert_expiry'])})"))


def _print_proxies(hosts: list[dict[str, Any]]) -> None:
    """The proxies' builds and wire versions (several during a rolling upgrade), and what they cannot take."""
    builds: dict[str, list[str]] = {}
    for h in hosts:
        p = h.get("proxy")
        if p:
            builds.setdefault(f"glassmesh {p['build']} (wire {p['wire']})", []).append(h["name"])
    if builds:
        out.print("proxies: " + "; ".join(f"{b}: {', '.join(names)}" for b, names in sorted(builds.items())))
    for h in hosts:
        p = h.get("proxy") or {}
        if p.get("refused"):
            out.print(Text(f"  {h['name']}: refused: {p['refused']}", style="red"))
        if h.get("lacks"):
            out.print(Text(f"  {h['name']}: its snapshot requires {', '.join(h['lacks'])}, which its proxy "
                           f"lacks: it keeps its last-known-good snapshot until upgraded", style="yellow"))


@click.command()
@click.option("-o", "--output", "output", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table: for people; json or yaml: the control plane's answer, for scripts.")
@click.option("--json", "output", flag_value="json", hidden=True, help="Same as -o json.")
@control_option
def status(output: str, control: str) -> None:
    """Replicas, hosts and their snapshot versions, held changes, unhealthy instances, outage budget."""
    doc = expect_ok(*call(control, "GET", "/v1/status"))
    emit(doc, output, lambda: _print_status(doc))


@click.command()
@click.argument("service")
@control_option
def release(service: str, control: str) -> None:
    """Let SERVICE's held change through (its endpoints become what the change wanted)."""
    doc = expect_ok(*call(control, "POST", "/v1/release", {"service": service}))
    out.print(f"released the held change to {service}: it now has {doc['endpoints']} endpoint(s)")


@click.command()
@click.argument("service")
@click.option("--undo", is_flag=True, help="Clear the drain mark (the guard protects SERVICE again).")
@control_option
def drain(service: str, undo: bool, control: str) -> None:
    """Mark SERVICE as emptied on purpose: its endpoints may go to none without being held."""
    doc = expect_ok(*call(control, "POST", "/v1/drain",
                          {"service": service, "undo": undo}))
    out.print(f"{service}: {'drained' if doc['drained'] else 'no longer drained'}")
