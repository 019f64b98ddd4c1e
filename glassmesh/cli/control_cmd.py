"""`glassmesh control`: run one control-plane replica (API on 127.0.0.1:4200 by default)."""

from __future__ import annotations

import click


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for this replica's files: the SQLite file, and in DIR/ca a copy of the CA "
                   "the replicas share through the store (created by the first replica to start).")
@click.option("--listen", default="127.0.0.1:4200", show_default=True, help="Address of the HTTP API.")
@click.option("--store", "store_spec", default="sqlite", show_default=True,
              help="'sqlite' (one replica) or etcd://host:port[,host:port...] (several replicas).")
@click.option("--trust-domain", default="glassmesh.local", show_default=True, help="SPIFFE trust domain.")
@click.option("--dns-server", "dns_servers", multiple=True, metavar="IP[:PORT]",
              help="Nameserver for services discovered by DNS (repeatable; default: those in /etc/resolv.conf).")
@click.option("--proxy-listen", default=None, metavar="ADDR",
              help="Address of the proxies' listener (mutual TLS: joins, certificates, snapshots) "
                   "[default: --listen's address, port + 1, i.e. 127.0.0.1:4201].")
@click.option("--leaf-hours", default=24.0, type=click.FloatRange(0.001, 24 * 365), hidden=True,
              help="Lifetime of the host and service certificates it signs (tests shorten it).")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def control(data_dir: str, listen: str, store_spec: str, trust_domain: str, dns_servers: tuple[str, ...],
            proxy_listen: str | None, leaf_hours: float, verbose: bool) -> None:
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
    explicit = proxy_listen is not None
    if proxy_listen is None:
        lhost, _, lport = listen.rpartition(":")
        proxy_listen = f"{lhost}:{int(lport) + 1}"
    elif ":" not in proxy_listen or not proxy_listen.rpartition(":")[2].isdigit():
        raise click.UsageError(f"--proxy-listen must be host:port, got {proxy_listen!r}")
    import os

    from glassmesh.ca import CAError
    from glassmesh.control.identity import Identity, open_ca

    try:
        # The CA lives with the control plane's state for now (an offline root is a later issue).
        identity = Identity(open_ca(os.path.join(data_dir, "ca"), trust_domain), leaf_hours=leaf_hours)
        store = open_store(store_spec, data_dir)
        asyncio.run(serve(store, listen, trust_domain, dns_servers, identity=identity, proxy_listen=proxy_listen,
                          proxy_listen_explicit=explicit, tls_dir=os.path.join(data_dir, "ca")))
    except (StartupError, StoreError, CAError, ValueError) as e:
        raise click.ClickException(str(e)) from None
