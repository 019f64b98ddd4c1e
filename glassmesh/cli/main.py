"""The `glassmesh` command: argument parsing and presentation only.

Each subcommand lives in its own module and is imported when used, so that
`glassmesh proxy` does not pay for the CA's or the demo's imports.
"""

from __future__ import annotations

import importlib
import sys

import click

from glassmesh import __version__
from glassmesh.cli import exits

# name -> (module, attribute); loaded lazily.
_COMMANDS = {
    "proxy": ("glassmesh.cli.proxy_cmd", "proxy"),
    "restart-proxy": ("glassmesh.cli.restart_cmd", "restart_proxy"),
    "install-units": ("glassmesh.cli.units_cmd", "install_units"),
    "ca": ("glassmesh.cli.ca_cmd", "ca"),
    "demo": ("glassmesh.cli.demo_cmd", "demo"),
    "control": ("glassmesh.cli.backup_cmd", "control"),  # the replica, and its backup/restore subcommands
    "apply": ("glassmesh.cli.apply_cmd", "apply"),
    "diff": ("glassmesh.cli.apply_cmd", "diff"),
    "get": ("glassmesh.cli.state_cmd", "get"),
    "history": ("glassmesh.cli.state_cmd", "history"),
    "rollback": ("glassmesh.cli.state_cmd", "rollback"),
    "status": ("glassmesh.cli.status_cmd", "status"),
    "check": ("glassmesh.cli.check_cmd", "check"),
    "links": ("glassmesh.cli.links_cmd", "links"),
    "explain": ("glassmesh.cli.explain_cmd", "explain"),
    "release": ("glassmesh.cli.status_cmd", "release"),
    "drain": ("glassmesh.cli.status_cmd", "drain"),
    "host": ("glassmesh.cli.host_cmd", "host"),
    "version": ("glassmesh.cli.version_cmd", "version"),
    "completion": ("glassmesh.cli.completion_cmd", "completion"),
    "dashboard": ("glassmesh.cli.dashboard_cmd", "dashboard"),
    "tap": ("glassmesh.cli.tap_cmd", "tap"),
    "capture": ("glassmesh.cli.tap_cmd", "capture"),
    "trace": ("glassmesh.cli.trace_cmd", "trace"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        mod, attr = _COMMANDS[name]
        return getattr(importlib.import_module(mod), attr)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=exits.EPILOG)
@click.version_option(__version__, prog_name="glassmesh")
def cli() -> None:
    """glassmesh: per-host mTLS proxies, a built-in CA, and the tools to see through them."""


def main() -> None:
    sys.exit(exits.run(cli))
