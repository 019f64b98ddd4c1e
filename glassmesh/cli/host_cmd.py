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
from glassmesh.settings import config_dir as default_config_dir

DEFAULT_DATA = "/var/lib/glassmesh"  # the proxy's state directory on a host set up by `host join`


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
@click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True,
              help="The proxy's state directory, only for the command lines printed.")
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
    join_cmd = ["glassmesh", "host", "join", "--control", url, "--token", doc["token"], "--ca-sha256", doc["ca_sha256"]]
    if data_dir != DEFAULT_DATA:
        join_cmd += ["--data", data_dir]
    out.print(f"or, to write its config ({default_config_dir()}/proxy.yaml) and then run `glassmesh proxy`:")
    out.print(f"  {shlex.join(join_cmd)}")


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


SERVICE_USER = "glassmesh"


def service_user(name: str | None) -> tuple[int, int] | None:
    """(uid, gid) of the user the proxy runs as, to give its files to; None: leave them to whoever runs this.

    The default is the units' user (`glassmesh`), when root runs the join and the user exists, so that
    `systemctl start glassmesh-proxy` reads the config `host join` wrote with no chown step between.
    """
    import os
    import pwd

    if name is None:
        if os.geteuid() != 0:
            return None
        try:
            pw = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None
    else:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise click.BadParameter(f"no such user {name!r}", param_hint="--user") from None
        if os.geteuid() != 0 and pw.pw_uid != os.geteuid():
            raise click.BadParameter(f"only root may give files to {name!r}", param_hint="--user")
    return pw.pw_uid, pw.pw_gid


def _tree(top: str) -> list[str]:
    import os

    found = [top]
    for root, dirs, files in os.walk(top):
        found += [os.path.join(root, n) for n in dirs + files]
    return found


@host.command("join")
@click.option("--control", "control", required=True, metavar="URL[,URL...]",
              help="The control plane's proxy listener (https://ADDR, default port 4201), as `glassmesh host add` "
                   "prints it; several replicas comma-separated.")
@click.option("--token", required=True, help="The single-use join token from `glassmesh host add`.")
@click.option("--ca-sha256", required=True, metavar="HEX",
              help="SHA-256 of the control plane's CA, printed by `glassmesh host add`: checked before the join "
                   "trusts it.")
@click.option("--host", "host_name", default=None, metavar="NAME",
              help="This host's name; it must match the token's (default: the token's).")
@click.option("--config-dir", default=None, type=click.Path(file_okay=False),
              help="Where to write proxy.yaml [default: $GLASSMESH_CONFIG_DIR or /etc/glassmesh].")
@click.option("--data", "data_dir", default=DEFAULT_DATA, show_default=True, type=click.Path(file_okay=False),
              help="The proxy's state directory (mode 0700): the host identity, certificates, last snapshot.")
@click.option("--force", is_flag=True, help="Replace an existing proxy.yaml.")
@click.option("--user", "owner", default=None, metavar="USER",
              help="Give proxy.yaml and the data directory to USER, the proxy's service user [default: `glassmesh` "
                   "when run as root and that user exists (install-units makes it), else nobody].")
def join(control: str, token: str, ca_sha256: str, host_name: str | None, config_dir: str | None, data_dir: str,
         force: bool, owner: str | None) -> None:
    """Join this host with a token and write the proxy's config, so that `glassmesh proxy` alone starts it.

    Gets the host identity (keys made here, only a CSR is sent), creates the
    data directory (0700) and writes DIR/proxy.yaml (0600) with the control
    plane's URL, the host's name and the data directory. The token is used
    once and written nowhere.
    """
    import asyncio
    import os

    import yaml

    from glassmesh.files import private_dir, write_private
    from glassmesh.proxy.enroll import EnrollError, obtain
    from glassmesh.proxy.watch import split_urls

    cdir = config_dir or default_config_dir()
    path = os.path.join(cdir, "proxy.yaml")
    ids = service_user(owner)
    if os.path.exists(path) and not force:
        raise click.ClickException(f"{path} exists: this host was set up already (give --force to replace it)")
    try:
        urls = split_urls(control)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--control") from None
    if not urls[0].startswith("https://"):
        raise click.BadParameter("the join goes over TLS: give the control plane's proxy listener, https://ADDR",
                                 param_hint="--control")
    data = os.path.abspath(data_dir)
    try:  # both directories first: a token is spent by the join, so nothing may fail after it that can fail before
        os.makedirs(cdir, mode=0o700, exist_ok=True)
        if not os.access(cdir, os.W_OK):
            raise PermissionError(f"cannot write in {cdir} (run as its owner, or give --config-dir DIR)")
        private_dir(data)
    except OSError as e:
        raise click.ClickException(str(e)) from None
    try:
        ident = asyncio.run(obtain(urls, data, host_name, token, ca_sha256))
    except (EnrollError, OSError) as e:
        raise click.ClickException(str(e)) from None
    doc = {"control": ",".join(urls), "host": ident.host, "data": data}
    head = (f"# Written by `glassmesh host join`: host {ident.host}, identity in {data}/identity.\n"
            f"# Keys are the flags of `glassmesh proxy` (see docs/reference/proxy-yaml.md).\n")
    write_private(path, (head + yaml.safe_dump(doc, sort_keys=False)).encode())
    if ids is not None:  # the daemon runs as its own user: its config and state are its own, nobody else's
        for f in [path, *_tree(data)]:
            os.chown(f, *ids)
    default = os.path.abspath(path) == os.path.abspath(os.path.join(default_config_dir(), "proxy.yaml"))
    out.print(f"joined as host {ident.host} (may serve: {', '.join(ident.services) or 'nothing'})")
    whose = f", owned by {owner or SERVICE_USER}" if ids is not None else ""
    out.print(f"wrote {path} (0600{whose}): control, host, data")
    out.print(f"data directory {data} (0700) holds the host identity")
    out.print("start the proxy with:")
    out.print(f"  {shlex.join(['glassmesh', 'proxy'] + ([] if default else ['--config-file', path]))}")
