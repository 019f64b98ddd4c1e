"""`glassmesh restart-proxy --pid PID`: a seamless restart of a running proxy, and its outcome.

The unit's ExecReload runs it, so `systemctl reload glassmesh-proxy` restarts
the proxy from the glassmesh now on disk with nothing refused, and fails
(the old process serving on) when the new one cannot start. See
glassmesh/proxy/handover.py for what happens between the two processes.
"""

from __future__ import annotations

import click

from glassmesh.cli.exits import FAILED, CliError


@click.command("restart-proxy")
@click.option("--pid", required=True, type=click.IntRange(1), metavar="PID",
              help="The proxy's main process (the supervisor with --workers); under systemd, $MAINPID.")
@click.option("--timeout", default=90.0, show_default=True, type=click.FloatRange(1, 3600), metavar="SECONDS",
              help="How long to wait for the new process to serve (the proxy gives it 60 s, then stops it).")
def restart_proxy(pid: int, timeout: float) -> None:
    """Restart a proxy with nothing dropped: a new process takes over every listening socket, the old one drains.

    The new process runs the glassmesh installed now (an upgraded wheel takes
    effect) with the same command line, so its config file is read again. It
    gets the old one's sockets (ports, unix sockets, admin) and serves them
    before the old one stops accepting: no connection is refused in between.
    Prints the new pid; exits 1 with the reason when the new process did not
    come up (the old one serves on, untouched).
    """
    from glassmesh.proxy.handover import ask

    try:
        ok, said = ask(pid, timeout)
    except ProcessLookupError:
        raise CliError(f"no process {pid}") from None
    except FileNotFoundError:
        raise CliError(f"no process {pid}") from None
    except PermissionError:
        raise CliError(f"not allowed to signal pid {pid}: run this as the proxy's user (or root)") from None
    if not ok:
        e = CliError(f"the proxy (pid {pid}) was not restarted and serves on: {said}")
        e.exit_code = FAILED
        raise e
    click.echo(f"proxy restarted: pid {said} serves every listener; pid {pid} drains what is in flight and exits")
