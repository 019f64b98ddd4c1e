"""`glassmesh host add|list|remove`: admit a host to the mesh with a single-use join token, list, withdraw.

The token is shown once, here, and never stored (the control plane keeps its
SHA-256): losing it means asking for another, which is cheap; a token that
leaks is only good once and only until it expires.
"""

from __future__ import annotations

import shlex
import time

import click
from rich.table import Table
from rich.text import Text

from glassmesh.cli._control_client import call, control_option, expect_ok, out
from glassmesh.cli.output import FORMATS, emit, utc


def _until(ts: float | None) -> str:
    if not ts:
        return "-"
    left = ts - time.time()
    when = utc(ts)
    if left <= 0:
        return f"{when} (expired)"
    return f"{when} (in {left / 3600:.1f} h)" if left >= 7200 else f"{when} (in {left / 60:.0f} min)"


@click.group()
def host() -> None:
    """Admit hosts (join tokens), list them, remove them."""


@host.command("add")
@click.argument("name")
@click.option("--services", required=True, metavar="A,B",
              help="Comma-separated services this host may serve: it gets certificates for these only.")
@click.option("--ttl", default="1h", show_default=True,
              help="How long the token can be used (s, m, h, d: 90s, 30m, 1h, 2d).")
@click.option("--address", default="", metavar="IP:PORT",
              help="The host's inbound address, for a host that mesh.yaml does not list.")
@click.option("--data", "data_dir", default="/var/lib/glassmesh", show_default=True,
              help="The proxy's state directory, only for the command line printed.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON (token included).")
@control_option
def add(name: str, services: str, ttl: str, address: str, data_dir: str, as_json: bool, control: str) -> None:
    """Print a single-use, expiring join token for NAME and the command that starts its proxy with it."""
    from glassmesh.control.identity import parse_duration

    try:
        ttl_s = parse_duration(ttl)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--ttl") from None
    svcs = [s.strip() for s in services.split(",") if s.strip()]
    doc = expect_ok(*call(control, "POST", "/v1/hosts",
                          {"name": name, "services": svcs, "ttl_s": ttl_s, "address": address}))
    if as_json:
        out.print_json(data=doc)
        return
    url = doc.get("proxy_url") or "https://CONTROL:4201"
    cmd = ["glassmesh", "proxy", "--control", url, "--join", doc["token"], "--ca-sha256", doc["ca_sha256"],
           "--data", data_dir]
    out.print(f"join token for host {name} (may serve: {', '.join(doc['services']) or 'nothing'}); "
              f"single use, expires {_until(doc['expires'])}:")
    out.print(Text(f"  {doc['token']}", style="bold"))
    out.print("start its proxy with:")
    out.print(f"  {shlex.join(cmd)}")


@host.command("list")
@click.option("-o", "--output", "output", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table: for people; json or yaml: the control plane's answer, for scripts.")
@click.option("--json", "output", flag_value="json", hidden=True, help="Same as -o json.")
@control_option
def list_(output: str, control: str) -> None:
    """Joined hosts (services, earliest certificate expiry) and join tokens not used yet."""
    doc = expect_ok(*call(control, "GET", "/v1/hosts"))
    emit(doc, output, lambda: _print_hosts(doc))


def _print_hosts(doc: dict) -> None:  # type: ignore[type-arg]
    t = Table("host", "may serve", "inbound", "certificates until", box=None, title="joined", title_justify="left")
    for h in doc["hosts"]:
        # Admitted at join, plus what the config in force runs there (marked: it comes and goes with the config).
        serves = [s if s in h["services"] else f"{s} (config)" for s in h.get("may_serve", h["services"])]
        t.add_row(h["name"] + (" (removed)" if h["removed"] else ""), ", ".join(serves) or "-",
                  h["inbound"] or "-", _until(h["cert_not_after"]))
    out.print(t)
    if doc["pending"]:
        p = Table("host", "services", "token expires in", "token sha256", box=None, title="pending join tokens",
                  title_justify="left")
        for x in doc["pending"]:
            p.add_row(x["host"], ", ".join(x["services"]), f"{x['expires_in_s']:.0f}s", x["token_sha256"] + "...")
        out.print(p)
    else:
        out.print("pending join tokens: none")


@host.command("remove")
@click.argument("name")
@control_option
def remove(name: str, control: str) -> None:
    """Withdraw NAME: drop its unused tokens; it gets no new or renewed certificates and leaves the mesh.

    Certificates already issued stay valid until they expire (at most their lifetime, 24 h by default).
    """
    doc = expect_ok(*call(control, "DELETE", f"/v1/hosts/{name}"))
    out.print(f"host {name} removed ({doc['tokens_dropped']} unused join token(s) dropped); certificates it "
              f"holds stay valid until they expire")
