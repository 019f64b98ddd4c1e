"""`glassmesh explain A B [--path P] [--method M]`: what the mesh does now with a request from A to B.

The control plane answers (control/explain.py, `GET /v1/explain`) from the
snapshot of a host that runs A, with the route picked by the proxy's own
matching code, and the endpoints as that host's proxy sees them now; this
prints it: the authorization decision, the route with its subsets and
weights, the endpoints with health and ejection, the certificates in use
and the timeouts and retries in force.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from glassmesh.cli._control_client import call, control_option, expect_ok, out
from glassmesh.cli.output import emit, output_option, utc


def _ms(v: int | float | None) -> str:
    return "none" if not v else f"{v:g} ms" if v < 10_000 else f"{v / 1000:g} s"


def _who(callers: list[str] | None) -> str:
    return "every service" if callers is None else ", ".join(callers) or "nobody"


def _print(doc: dict[str, Any]) -> None:
    r = doc["request"]
    hdrs = "".join(f" {k}: {v};" for k, v in r["headers"].items())
    out.print(Text(f"{doc['from']} -> {doc['to']}: {r['method']} {r['path']}{hdrs} as host {doc['host']}'s proxy "
                   f"sees it (snapshot v{doc['snapshot_version']})", style="bold"))
    others = [h for h in doc["caller_hosts"] if h != doc["host"]]
    if others:
        out.print(Text(f"  ({doc['from']} also runs on {', '.join(others)}: --host H to ask as one of them)", style="dim"))
    auth = doc["authorization"]
    out.print(Text("authorization: " + ("allowed" if auth["allowed"] else "REFUSED"),
                   style="green" if auth["allowed"] else "bold red"))
    out.print(f"  outbound ({doc['host']}): {auth['outbound']}")
    for i in auth["inbound"]:
        verdict = "allowed" if i["allowed"] else f"403 forbidden: {doc['from']} is not among its callers"
        out.print(f"  inbound ({i['host']}): {verdict} (callers: {_who(i['callers'])})")
    if "route" not in doc:
        if doc.get("protocol") == "tcp":
            out.print(f"{doc['to']} is a tcp service: bytes are carried as they are, no routes or retries")
        return
    rt = doc["route"]
    match = ", ".join(f"{k} " + (" ".join(map(str, v)) if isinstance(v, list) else
                                  ", ".join(f"{h}: {x}" for h, x in v.items()) if isinstance(v, dict) else str(v))
                      for k, v in (rt["match"] or {}).items()) or "every request"
    skipped = f"; did not match: {', '.join(rt['not_matched'])}" if rt["not_matched"] else ""
    out.print(Text(f"route: {rt['name']}", style="bold") + Text(
        f" ({match}{skipped})" if rt["name"] != "default" else f" (no route matched{skipped}: every endpoint, "
                                                               f"no timeout or retry rule of its own)"))
    for b in rt["split"]:
        eps = ", ".join(f"{e['host']}" for e in b["endpoints"]) or "no endpoint"
        name = f"subset {b['subset']}" if b["subset"] else "every endpoint"
        out.print(f"  {b['share'] * 100:g}% to {name} (weight {b['weight']:g}): {eps}")
    retry = rt["retry"]
    pol = doc["policy"]
    budget = pol["retry_budget"]
    out.print(f"  timeout {_ms(rt['timeout_ms'])}, idle timeout {_ms(rt['idle_timeout_ms'])}; retries: " + (
        "none (only a failed connect, which reached no app, is tried again)" if retry is None else
        f"up to {retry['attempts']} tries on "
        + ", ".join([*(str(s) for s in retry["on_status"]), *(["connect failures"] if retry["connect_failures"] else [])]))
        + f"; retry budget {budget['percent']:g}% + {budget['min_per_second']:g}/s")
    if rt["fault"]:
        out.print(Text(f"  fault injection: {rt['fault']}", style="yellow"))
    if rt["mirror"]:
        out.print(f"  mirrored: {rt['mirror']['percent']:g}% to subset {rt['mirror']['subset']}")
    _endpoints(doc)
    t = doc["timeouts_ms"]
    ol = pol["outlier"]
    out.print(f"timeouts ({doc['host']}'s proxy): connect {_ms(t['connect_ms'])}, response head {_ms(t['response_ms'])}, "
              f"idle connection {_ms(t['idle_ms'])}; balance {pol['balance']}; ejection: " + (
                  "off" if ol is None else f"after {ol['consecutive_failures']} failures in a row, "
                                           f"{_ms(ol['base_ejection_ms'])} doubling to {_ms(ol['max_ejection_ms'])}, "
                                           f"at most {ol['max_ejection_percent']}%")
              + ("; limits " + ", ".join(f"{k} {v}" for k, v in pol["limits"].items()) if pol["limits"] else ""))
    out.print("certificates:")
    for c in doc["certificates"]:
        if c.get("error"):
            out.print(Text(f"  {c['service']} on {c['host']}: cannot be read: {c['error']}", style="bold red"))
            continue
        when = (f"expires {utc(c['not_after'])}" + (" (as issued; its proxy did not say)"
                                                     if c.get("source") == "issued" else "")
                if c["not_after"] else "not known (its proxy did not answer, and the control plane did not issue it)")
        who = f" {c['spiffe_id']}" if c.get("spiffe_id") else ""
        out.print(f"  {c['service']} on {c['host']}:{who} {when}")


def _endpoints(doc: dict[str, Any]) -> None:
    live = doc.get("live")
    labels = {e["address"]: e["labels"] for e in doc["endpoints"]}
    if live is None:
        out.print(Text(f"endpoints as pushed (host {doc['host']}'s proxy was not asked: "
                       f"{doc.get('live_error', 'not connected')}):", style="yellow"))
        for e in doc["endpoints"]:
            out.print(f"  {e['host']} {e['address']} {e['labels'] or ''}")
        return
    t = Table("host", "address", "labels", "state", "requests", "failures", "ejections", "in flight", "latency",
              box=None, pad_edge=False, title=f"endpoints, as host {doc['host']}'s proxy sees them now",
              title_justify="left")
    for e in live["endpoints"]:
        state = Text(f"ejected ({e['ejected_for_s']:.1f} s left)", style="bold red") if e["ejected"] else \
            Text("in rotation", style="green")
        lab = ",".join(f"{k}={v}" for k, v in labels.get(e["address"], {}).items()) or "-"
        t.add_row(e["host"], e["address"], lab, state, str(e["requests"]), str(e["failures"]), str(e["ejections"]),
                  str(e["outstanding"]), f"{e['latency_ewma_s'] * 1000:.1f} ms")
    out.print(t)
    if not live["endpoints"]:
        out.print(Text("  no endpoint: requests fail with 503 no_endpoints", style="bold red"))


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--path", default="/", show_default=True, help="The request's path (and query).")
@click.option("--method", default="GET", show_default=True, help="The request's method.")
@click.option("--header", "headers", multiple=True, metavar="NAME:VALUE", help="A request header (routes may match "
              "on headers); repeat for more.")
@click.option("--host", default=None, help="Ask as the proxy of this host (default: the first that runs SOURCE).")
@output_option()
@control_option
def explain(source: str, destination: str, path: str, method: str, headers: tuple[str, ...], host: str | None,
            output: str, control: str) -> None:
    """What happens now to a request from SOURCE to DESTINATION: authorization, route, subsets and weights,
    endpoints with health and ejection, timeouts and retries, certificates."""
    query = [("from", source), ("to", destination), ("path", path), ("method", method),
             *(("header", h) for h in headers), *([("host", host)] if host else [])]
    doc = expect_ok(*call(control, "GET", "/v1/explain?" + urllib.parse.urlencode(query)))
    emit(doc, output, lambda: _print(doc))
