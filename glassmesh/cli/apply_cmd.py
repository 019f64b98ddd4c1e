"""`glassmesh apply` and `glassmesh diff`: send mesh.yaml to the control plane, show what changes."""

from __future__ import annotations

import click

from glassmesh.cli._control_client import (
    ControlError,
    InvalidConfig,
    author_option,
    call,
    control_option,
    default_author,
    expect_ok,
    out,
    print_diff,
    print_problems,
)


def _send(control: str, path: str, author: str | None, dry_run: bool) -> dict:  # type: ignore[type-arg]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ControlError(f"cannot read {path}: {e.strerror or e}") from None
    payload = {"yaml": text, "author": author or default_author(), "dry_run": dry_run, "filename": path}
    status, doc = call(control, "POST", "/v1/apply", payload)
    if status == 400 and "problems" in doc:
        print_problems(doc, path)
        n = len(doc["problems"])
        raise InvalidConfig(f"{path}: {n} problem{'s' if n != 1 else ''}, nothing applied")
    return expect_ok(status, doc)


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="The mesh config (YAML).")
@click.option("--dry-run", is_flag=True, help="Validate and show the diff, change nothing.")
@author_option
@control_option
def apply(path: str, dry_run: bool, author: str | None, control: str) -> None:
    """Validate mesh.yaml, show the diff, and make it the mesh's config (a new version)."""
    doc = _send(control, path, author, dry_run)
    print_diff(doc["diff"])
    if not doc["changed"]:
        out.print(f"no changes: the config is version {doc['version']}")
    elif dry_run:
        out.print(f"dry run: nothing applied (the config stays version {doc['version']})")
    else:
        out.print(f"applied: version {doc['version']} (sha256 {doc['sha256'][:12]})")


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="The mesh config (YAML).")
@control_option
def diff(path: str, control: str) -> None:
    """Show what applying mesh.yaml would change (validates it too)."""
    doc = _send(control, path, None, True)
    if doc["changed"]:
        print_diff(doc["diff"])
    else:
        out.print(f"no changes against version {doc['version']}")
