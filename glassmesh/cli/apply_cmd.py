"""`glassmesh apply` and `glassmesh diff`: send mesh.yaml to the control plane, show what changes."""

from __future__ import annotations

import click

from glassmesh.cli._control_client import (
    ControlError,
    InvalidConfig,
    call,
    control_option,
    expect_ok,
    out,
    print_diff,
    print_problems,
)


def _send(control: str, path: str, dry_run: bool) -> dict:  # type: ignore[type-arg]
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ControlError(f"cannot read {path}: {e.strerror or e}") from None
    # No author: the control plane records the name in the operator credential that makes the call.
    payload = {"yaml": text, "dry_run": dry_run, "filename": path}
    status, doc = call(control, "POST", "/v1/apply", payload)
    if status == 400 and "problems" in doc:
        print_problems(doc, path)
        n = len(doc["problems"])
        raise InvalidConfig(f"{path}: {n} problem{'s' if n != 1 else ''}, nothing applied")
    return expect_ok(status, doc)


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="The mesh config (YAML).")
@click.option("--dry-run", is_flag=True, help="Validate and show the diff, change nothing.")
@control_option
def apply(path: str, dry_run: bool, control: str) -> None:
    """Validate mesh.yaml, show the diff, and make it the mesh's config (a new version)."""
    doc = _send(control, path, dry_run)
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
    doc = _send(control, path, True)
    if doc["changed"]:
        print_diff(doc["diff"])
    else:
        out.print(f"no changes against version {doc['version']}")
