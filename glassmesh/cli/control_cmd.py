"""`glassmesh control`: run one control-plane replica (API on 127.0.0.1:4200 by default)."""

from __future__ import annotations

import click

from glassmesh.settings import daemon_command


def _host_port(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An address option as a callback, so that a config file's bad value is reported with its line."""
    if value is not None and (":" not in value or not value.rpartition(":")[2].isdigit()):
        raise click.BadParameter(f"must be host:port, got {value!r}")
    return value


def _dns_servers(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from glassmesh.control.dns import parse_server

    for spec in value:
        try:
            parse_server(spec)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return value


@daemon_command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for this replica's files: the SQLite file, and in DIR/ca a copy of the CA "
                   "the replicas share through the store (created by the first replica to start).")
@click.option("--listen", default="127.0.0.1:4200", show_default=True, callback=_host_port,
              help="Address of the operator API (TLS; callers need an operator credential, see --help of "
                   "`glassmesh ca issue`). The first admin credential is written to DIR/admin.pem.")
@click.option("--store", "store_spec", default="sqlite", show_default=True,
              help="'sqlite' (one replica), or etcds://host:port[,host:port...] (several replicas; etcd over TLS "
                   "with --etcd-ca/--etcd-cert/--etcd-key); plain etcd:// only with every member on loopback.")
@click.option("--etcd-ca", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CA that signed the etcd members' server certificates (etcds://).")
@click.option("--etcd-cert", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Client certificate this replica presents to etcd (etcd --client-cert-auth).")
@click.option("--etcd-key", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Key of --etcd-cert (mode 0600).")
@click.option("--ca-passphrase-file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="File (mode 0600) holding the passphrase that encrypts the CA key in the store, so that a "
                   "copy of the store mints nothing; or set GLASSMESH_CA_PASSPHRASE. Required with etcd.")
@click.option("--trust-domain", default="glassmesh.local", show_default=True, help="SPIFFE trust domain.")
@click.option("--dns-server", "dns_servers", multiple=True, metavar="IP[:PORT]", callback=_dns_servers,
              help="Nameserver for services discovered by DNS (repeatable; default: those in /etc/resolv.conf).")
@click.option("--proxy-listen", default=None, metavar="ADDR", callback=_host_port,
              help="Address of the proxies' listener (mutual TLS: joins, certificates, snapshots) "
                   "[default: --listen's address, port + 1, i.e. 127.0.0.1:4201].")
@click.option("--insecure-proxy-listen", default=None, metavar="ADDR", callback=_host_port,
              help="Also serve the proxy routes over plain HTTP on ADDR (loopback only), for proxies started with "
                   "an http:// --control URL and certificates put in DIR/certs by hand. INSECURE: any local "
                   "process can then read the snapshot of, and report instances for, any host that never joined.")
@click.option("--leaf-hours", default=24.0, type=click.FloatRange(0.001, 24 * 365), hidden=True,
              help="Lifetime of the host and service certificates it signs (tests shorten it).")
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
@click.option("--log-format", "log_format", type=click.Choice(("text", "json")), default="text", show_default=True,
              help="Log lines on stderr (and the start-up lines on stdout): text (UTC time, level, logger, "
                   "message) or one JSON object per line (ts, level, logger, msg, pid).")
def control(data_dir: str, listen: str, store_spec: str, etcd_ca: str | None, etcd_cert: str | None,
            etcd_key: str | None, ca_passphrase_file: str | None, trust_domain: str, dns_servers: tuple[str, ...],
            proxy_listen: str | None, insecure_proxy_listen: str | None, leaf_hours: float, verbose: bool,
            log_format: str) -> None:
    """Run the control plane: keeps the mesh config, compiles and serves each host's snapshot."""
    import asyncio
    import logging

    from glassmesh.cli.output import utc_logging
    from glassmesh.control.server import StartupError, open_store, serve
    from glassmesh.control.store import StoreError

    utc_logging(logging.DEBUG if verbose else logging.INFO, log_format)
    explicit = proxy_listen is not None
    if proxy_listen is None:
        lhost, _, lport = listen.rpartition(":")
        proxy_listen = f"{lhost}:{int(lport) + 1}"
    import os
    import ssl

    from glassmesh.ca import CAError
    from glassmesh.control.identity import Identity, open_ca
    from glassmesh.control.server import EtcdTls
    from glassmesh.files import InsecureFile, check_private

    if (etcd_cert is None) != (etcd_key is None):
        raise click.UsageError("--etcd-cert and --etcd-key go together")
    if etcd_cert and not etcd_ca:
        raise click.UsageError("--etcd-cert needs --etcd-ca")
    passphrase: bytes | None = None
    try:
        if ca_passphrase_file:
            check_private(ca_passphrase_file, "CA passphrase file")
            with open(ca_passphrase_file, "rb") as f:
                passphrase = f.read().strip()
        elif os.environ.get("GLASSMESH_CA_PASSPHRASE"):
            passphrase = os.environ["GLASSMESH_CA_PASSPHRASE"].encode()
        if passphrase is not None and len(passphrase) < 12:
            raise click.UsageError("the CA passphrase must be at least 12 characters")
        if store_spec.startswith(("etcd://", "etcds://")) and passphrase is None:
            raise click.UsageError("an etcd store is shared and holds the CA key: give --ca-passphrase-file FILE "
                                   "(or GLASSMESH_CA_PASSPHRASE) so that it is kept encrypted there")
        # The CA lives with the control plane's state for now (an offline root is a later issue).
        identity = Identity(open_ca(os.path.join(data_dir, "ca"), trust_domain), leaf_hours=leaf_hours)
        store = open_store(store_spec, data_dir, EtcdTls(etcd_ca, etcd_cert, etcd_key) if etcd_ca else None)
        asyncio.run(serve(store, listen, trust_domain, dns_servers, identity=identity, proxy_listen=proxy_listen,
                          proxy_listen_explicit=explicit, tls_dir=os.path.join(data_dir, "ca"),
                          ca_passphrase=passphrase, insecure_proxy_listen=insecure_proxy_listen or "",
                          admin_credential=os.path.join(data_dir, "admin.pem")))
    except (StartupError, StoreError, CAError, ValueError, InsecureFile, OSError, ssl.SSLError) as e:
        raise click.ClickException(str(e)) from None
