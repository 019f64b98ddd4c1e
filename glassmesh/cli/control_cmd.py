"""`glassmesh control`: run one control-plane replica (API on 127.0.0.1:4200 by default)."""

from __future__ import annotations

import click


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the control plane's state (the SQLite file lives here).")
@click.option("--listen", default="127.0.0.1:4200", show_default=True, help="Address of the HTTP API.")
@click.option("--store", "store_spec", default="sqlite", show_default=True,
              help="'sqlite' (one replica) or etcd://host:port[,host:port...] (several replicas).")
@click.option("--trust-domain", default="glassmesh.local", show_default=True, help="SPIFFE trust domain.")
@click.option("--dns-server", "dns_servers", multiple=True, metavar="IP[:PORT]",
              help="Nameserver for services discovered by DNS (repeatable; default: those in /etc/resolv.conf).")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def control(data_dir: str, listen: str, store_spec: str, trust_domain: str, dns_servers: tuple[str, ...],
            verbose: bool) -> None:
    """Run the control plane: keeps the mesh config, compiles and serves each host's snapshot."""
    import asyncio
    import logging

    from glassmesh.control.dns import parse_server
    from glassmesh.control.server import StartupError, open_store, serve
    from glassmesh.control.store import StoreError

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if ":" not in listen or not listen.rpartition(":")[2].isdigit():
        raise click.UsageError(f"--listen must be host:port, got {listen!r}")
    for spec in dns_servers:
        try:
            parse_server(spec)
        except ValueError as e:
            raise click.UsageError(f"--dns-server: {e}") from None
    try:
        store = open_store(store_spec, data_dir)
        asyncio.run(serve(store, listen, trust_domain, dns_servers))
    except (StartupError, StoreError) as e:
        raise click.ClickException(str(e)) from None
