"""Exit statuses and error lines of every `glassmesh` command, in one place so scripts can rely on them.

A deploy script needs to tell "your file is wrong" from "the control plane is
down" without parsing English: the first is fixed by the author, the second
is retried or paged. So each kind of failure has its own status, the same in
every command, and every failure is one line on stderr starting `error: `.
`diff` borrows kubectl's convention: 1 means "there are differences", which
is an answer, not a failure.
"""

from __future__ import annotations

import sys
from typing import IO, Any

import click

OK = 0
DIFFERENT = 1  # `diff`: the file differs from the config in force (an answer, not an error)
USAGE = 2  # a flag, an argument or a local file (a credential, the config to send) is missing or wrong
INVALID_CONFIG = 3  # the config was refused by validation: each problem printed as file:line: field: message
REFUSED = 4  # the control plane answered and said no (not allowed, not found, conflict), or a host rejected
UNREACHABLE = 5  # no control-plane replica could be reached or answered (network, TLS, 5xx)
TIMED_OUT = 6  # `apply --wait`: not every affected host ran the new version in time
FAILED = 1  # any other failure: a daemon that could not start or stop cleanly, a backup that cannot be read,
# a `check` that failed

TABLE = (
    (OK, "success"),
    (DIFFERENT, "`diff` found differences, `check` found a failing check; any other command: it failed, for none "
                "of the reasons below (a daemon could not start, a backup could not be read)"),
    (USAGE, "usage error: a flag, an argument, or a local file (credential, config) missing or unreadable"),
    (INVALID_CONFIG, "the config is invalid (every problem printed as file:line: field: message)"),
    (REFUSED, "the control plane refused (not allowed, not found, conflict), or a host rejected the change"),
    (UNREACHABLE, "no control-plane replica could be reached or could answer"),
    (TIMED_OUT, "`apply --wait`: not every affected host runs the new version before --timeout"),
)

# \b keeps click from re-wrapping the list.
EPILOG = "\b\nExit statuses:\n" + "\n".join(f"  {code}  {text}" for code, text in TABLE)


def _say(text: str, style: str = "red") -> None:
    """One line on stderr, red on a terminal. rich is imported here only: `glassmesh proxy` goes through
    this module, and a proxy loads no presentation library (tests/unit/test_proxy_footprint.py)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, highlight=False, soft_wrap=True).print(Text(text, style=style))


def _err(message: str, file: IO[Any] | None = None) -> None:
    click.echo(f"error: {message}", file=file or sys.stderr)


class CliError(click.ClickException):
    """A failure already worded for the operator: `error: <message>` on stderr, then its own exit status."""

    exit_code = USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        _say(f"error: {self.message}")


class Refused(CliError):
    exit_code = REFUSED


class Unreachable(CliError):
    exit_code = UNREACHABLE


class TimedOut(CliError):
    exit_code = TIMED_OUT


class LocalProblem(CliError):
    """Something on this machine (a file, a credential) stops the command before it asks anyone."""

    exit_code = USAGE


class InvalidConfig(CliError):
    """The config was refused; each problem was printed already, this is the summary line."""

    exit_code = INVALID_CONFIG

    def show(self, file: IO[Any] | None = None) -> None:
        _say(self.message)


def run(group: click.Command, args: list[str] | None = None) -> int:
    """Run the CLI with one wording for every failure: click's own usage errors get the `error: ` prefix too.

    click prints `Error: ...` for usage errors and `Aborted!` for Ctrl-C; a
    script that greps stderr, and a person reading it, see one form instead.
    """
    try:
        rv = group.main(args=args, prog_name="glassmesh", standalone_mode=False)
    except click.UsageError as e:
        ctx = e.ctx
        cmd = ctx.command_path if ctx is not None else "glassmesh"
        _err(f"{e.format_message().rstrip('.')} (see `{cmd} --help`)")
        return USAGE
    except click.ClickException as e:
        if type(e).show is click.ClickException.show:  # click's own wording is "Error: ..."
            _err(e.format_message())
        else:
            e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        _err("interrupted")
        return 130
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    return rv if isinstance(rv, int) else OK
