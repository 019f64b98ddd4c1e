"""`glassmesh get`, `history` and `rollback`: read the config and its recorded changes, restore one."""

from __future__ import annotations

import click
from rich.table import Table

from glassmesh.cli._control_client import (
    call,
    control_option,
    expect_ok,
    out,
    print_diff,
)
from glassmesh.cli.output import emit, output_option, utc


@click.command()
@output_option(default="yaml", formats=("yaml", "json"))
@control_option
def get(output: str, control: str) -> None:
    """Print the current mesh config: yaml (canonical, with a version comment) or json (the API's answer)."""
    doc = expect_ok(*call(control, "GET", "/v1/config"))
    if output == "json":
        emit(doc, "json", lambda: None)
        return
    if not doc["version"]:
        out.print("# no config applied yet")
        return
    out.print(f"# version {doc['version']} by {doc['author']} at {utc(doc.get('at'))} sha256 {doc['sha256'][:12]}")
    out.print(doc["yaml"], end="", markup=False)


def _counts(diff: str) -> str:
    lines = diff.splitlines()
    add = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    rem = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return f"+{add} -{rem}"


@click.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--diff", "show_diff", is_flag=True, help="Show each version's diff too (table output).")
@output_option()
@control_option
def history(limit: int, show_diff: bool, output: str, control: str) -> None:
    """List config versions, newest first: who, when (UTC), what changed."""
    doc = expect_ok(*call(control, "GET", f"/v1/history?limit={limit}"))

    def table() -> None:
        t = Table("version", "when (UTC)", "author", "sha256", "change", "message", box=None)
        for v in doc["versions"]:
            t.add_row(str(v["version"]), utc(v["at"]), v["author"], v["sha256"][:12], _counts(v["diff"]),
                      v["message"])
        out.print(t)
        if show_diff:
            for v in doc["versions"]:
                out.print(f"\n[bold]version {v['version']}[/bold]")
                print_diff(v["diff"])

    emit(doc, output, table)


@click.command()
@click.argument("version", type=int)
@control_option
def rollback(version: int, control: str) -> None:
    """Restore config VERSION (recorded as a new version; history is kept)."""
    doc = expect_ok(*call(control, "POST", "/v1/rollback", {"version": version}))
    print_diff(doc["diff"])
    if doc["committed"]:
        out.print(f"rolled back to version {version}: now version {doc['version']}")
    else:
        out.print(f"no changes: version {doc['version']} already has version {version}'s content")
