"""`glassmesh proxy`: run one host's proxy from a snapshot file, or from a control plane it watches."""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click

from glassmesh.settings import config_dir, daemon_command


def _checked(module: str, check: str) -> Callable[[click.Context, click.Parameter, str | None], str | None]:
    """A URL option checked as it is read (module.check raises ValueError), so that a config file's bad URL is
    reported with its line; the checking module is imported only when the option is given."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            try:
                getattr(importlib.import_module(module), check)(value)
            except ValueError as e:
                raise click.BadParameter(str(e)) from None
        return value

    return callback


@daemon_command(secrets={"join"})
@click.option("--config", "config", default=None, type=click.Path(dir_okay=False),
              help="Snapshot file (JSON) this proxy serves; SIGHUP reloads it. With --control: the snapshot "
                   "to start from when DIR has no last-known-good one.")
@click.option("--control", "control", default=None, metavar="URL[,URL...]", callback=_checked("glassmesh.proxy.watch", "split_urls"),
              help="Control plane to watch for this host's snapshot: its proxy listener "
                   "(https://127.0.0.1:4201, mutual TLS with the host identity from --join), or, for a host "
                   "provisioned with certificate files, its API over plain HTTP (http://127.0.0.1:4200). "
                   "Several replicas, comma-separated (same scheme), are used in that order: the proxy "
                   "moves to the next when one fails.")
@click.option("--host", "host", default=None,
              help="This host's name in the mesh (with --control; with https:// it comes from the join "
                   "token and, if given, must match).")
@click.option("--data", "data_dir", default=None, type=click.Path(file_okay=False),
              help="State directory (with --control): DIR/snapshot.json is the last-known-good snapshot, "
                   "certificates are in DIR/certs/, the host identity in DIR/identity/.")
@click.option("--join", "join", default=None, metavar="TOKEN",
              help="Single-use join token from `glassmesh host add`: the first start gets the host identity "
                   "with it (keys are made here, only a CSR is sent); later starts use DIR/identity.")
@click.option("--ca-sha256", "ca_sha256", default=None, metavar="HEX",
              help="SHA-256 of the control plane's CA, printed by `glassmesh host add`: checked before the "
                   "join trusts it.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes sharing the listening ports (SO_REUSEPORT).")
@click.option("--drain-timeout", "drain_timeout", default=30.0, show_default=True, type=click.FloatRange(0, 3600),
              metavar="SECONDS",
              help="On SIGTERM the proxy stops accepting, lets what is in flight finish for up to this long "
                   "(exiting as soon as nothing is left), then closes the rest.")
@click.option("--access-log", type=click.Path(dir_okay=False), default=None,
              help="Append one JSON line per request to this file.")
@click.option("--tls-keylog", type=click.Path(dir_okay=False), default=None,
              help="Write TLS session keys here (NSS key log format) so Wireshark/tshark can decrypt captures.")
@click.option("--log-format", "log_format", type=click.Choice(("text", "json")), default="text", show_default=True,
              help="The proxy's own log lines on stderr: text (UTC time, level, message) or one JSON object per "
                   "line (ts, level, logger, msg, pid).")
@click.option("--otlp-endpoint", "otlp_endpoint", default=None, metavar="URL", callback=_checked("glassmesh.proxy.spans", "check_url"),
              help="Send this proxy's spans (one per hop, W3C traceparent) to an OpenTelemetry collector over "
                   "OTLP/HTTP, e.g. http://127.0.0.1:4318 (/v1/traces is added when the URL has no path). "
                   "Batched, never in a request's way; dropped and counted when the collector is down.")
def proxy(config: str | None, control: str | None, host: str | None, data_dir: str | None, join: str | None,
          ca_sha256: str | None, workers: int, drain_timeout: float, access_log: str | None,
          tls_keylog: str | None, log_format: str, otlp_endpoint: str | None) -> None:
    """Run the data plane of one host: outbound listeners, the mTLS inbound port, tcp links and admin."""
    from glassmesh.logfmt import set_format

    set_format(log_format)
    from glassmesh.model.snapshot import SnapshotError
    from glassmesh.proxy.server import StartupError, run

    # Enrollment (cryptography, aiohttp: about 15 MB) is imported only by a proxy under a control plane.
    errors: tuple[type[Exception], ...] = (SnapshotError, StartupError)
    try:
        if control is not None:
            from glassmesh.proxy.enroll import EnrollError

            errors = (*errors, EnrollError)
            from glassmesh.proxy.watch import split_urls

            urls = split_urls(control)  # checked by _control_urls
            if urls[0].startswith("http://"):
                if join:
                    raise click.UsageError("--join goes over TLS: give --control https://ADDR, the control "
                                           "plane's proxy listener (--proxy-listen, default 127.0.0.1:4201)")
                if not host or not data_dir:
                    raise click.UsageError("--control needs --host NAME and --data DIR")
            if not data_dir:
                raise click.UsageError("--control needs --data DIR")
            from glassmesh.proxy.watch import run_controlled

            run_controlled(",".join(urls), host, data_dir, seed=config, workers=workers, keylog=tls_keylog,
                           access_log=access_log, join=join, ca_sha256=ca_sha256, drain_s=drain_timeout,
                           otlp=otlp_endpoint)
            return
        if config is None:
            raise click.UsageError("give --config FILE, or --control URL --host NAME --data DIR (or, to join, "
                                   "--control https://ADDR --join TOKEN --ca-sha256 HEX --data DIR), as flags, "
                                   "GLASSMESH_PROXY_* variables or in a config file (--config-file FILE, default "
                                   f"{config_dir()}/proxy.yaml; "
                                   "`glassmesh host join` writes one)")
        if host or data_dir or join:
            raise click.UsageError("--host, --data and --join go with --control")
        run(config, workers=workers, keylog=tls_keylog, access_log=access_log, drain_s=drain_timeout,
            otlp=otlp_endpoint)
    except errors as e:
        raise click.ClickException(str(e)) from None
