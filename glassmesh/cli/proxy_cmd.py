"""`glassmesh proxy`: run one host's proxy from a snapshot file."""

from __future__ import annotations

import click


@click.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False),
              help="Snapshot file (JSON) this proxy serves; SIGHUP reloads it.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes sharing the listening ports (SO_REUSEPORT).")
@click.option("--access-log", type=click.Path(dir_okay=False), default=None,
              help="Append one JSON line per request to this file.")
@click.option("--tls-keylog", type=click.Path(dir_okay=False), default=None,
              help="Write TLS session keys here (NSS key log format) so Wireshark/tshark can decrypt captures.")
def proxy(config: str, workers: int, access_log: str | None, tls_keylog: str | None) -> None:
    """Run the data plane of one host: outbound listeners, the mTLS inbound port, tcp links and admin."""
    from glassmesh.model.snapshot import SnapshotError
    from glassmesh.proxy.server import StartupError, run

    try:
        run(config, workers=workers, keylog=tls_keylog, access_log=access_log)
    except (SnapshotError, StartupError) as e:
        raise click.ClickException(str(e)) from None
