"""`glassmesh apply` and `glassmesh diff`: send mesh.yaml to the control plane, show what changes.

Both read `-f -` from stdin, so a pipeline (`render | glassmesh apply -f -`)
needs no temporary file. `diff` exits 1 when the file differs from the
config in force (kubectl's convention), so `glassmesh diff -f mesh.yaml ||
glassmesh apply -f mesh.yaml` applies only what changed. `apply --wait`
returns once every host whose snapshot the new version changed runs it, so
a deploy script's next step (a smoke test, the next canary weight) sees the
new config in force, not merely stored.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from glassmesh.cli._control_client import (
    InvalidConfig,
    LocalProblem,
    Refused,
    call,
    control_option,
    expect_ok,
    out,
    print_diff,
    print_problems,
)
from glassmesh.cli.exits import DIFFERENT, TimedOut
from glassmesh.cli.output import emit

_FILE_HELP = "The mesh config (YAML); - reads it from stdin."


def _read(path: str) -> tuple[str, str]:
    """(text, the name problems are reported under)."""
    if path == "-":
        return sys.stdin.read(), "<stdin>"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    except OSError as e:
        raise LocalProblem(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise LocalProblem(f"cannot read {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _send(control: str, path: str, dry_run: bool) -> dict[str, Any]:
    text, name = _read(path)
    # No author: the control plane records the name in the operator credential that makes the call.
    payload = {"yaml": text, "dry_run": dry_run, "filename": name}
    status, doc = call(control, "POST", "/v1/apply", payload)
    if status == 400 and "problems" in doc:
        print_problems(doc, name)
        n = len(doc["problems"])
        raise InvalidConfig(f"{name}: {n} problem{'s' if n != 1 else ''}, nothing applied")
    return expect_ok(status, doc)


def wait_for_hosts(control: str, version: int, timeout: float, interval: float = 0.2) -> dict[str, Any]:
    """Poll status until config `version` is compiled and every host runs its latest snapshot.

    A host whose proxy rejects its new snapshot fails the wait at once (Refused, with the
    proxy's reason): waiting longer would not change its mind. One that is down or slow
    fails it at the deadline (TimedOut, naming the hosts still behind).
    """
    deadline = time.monotonic() + timeout
    behind: list[str] = []
    while True:
        doc = expect_ok(*call(control, "GET", "/v1/status"))
        if doc.get("compile_error"):
            raise Refused(f"the control plane cannot compile version {version}: {doc['compile_error']}")
        if doc["config_version"] >= version:
            behind = []
            for h in doc["hosts"]:
                if h["in_sync"]:
                    continue
                rej = h.get("last_reject")
                if rej and not rej.get("past") and int(rej.get("version", 0)) >= h["latest"]:
                    raise Refused(f"version {version} applied, but host {h['name']} rejected snapshot "
                                  f"v{rej['version']}: {rej['reason']}")
                behind.append(f"{h['name']} (runs v{h['running'] or '-'}, latest v{h['latest']})")
            if not behind:
                return doc
        if time.monotonic() >= deadline:
            what = ", ".join(behind) if behind else f"the control plane has not compiled version {version} yet"
            raise TimedOut(f"version {version} applied, but not in force everywhere after {timeout:g} s: {what}")
        time.sleep(interval)


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help=_FILE_HELP)
@click.option("--dry-run", is_flag=True, help="Validate and show the diff, change nothing.")
@click.option("--wait", is_flag=True, help="Return only once every affected host runs the new version "
                                           "(exit 4 if a host rejects it, 6 at --timeout).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds --wait waits.")
@click.option("-o", "--output", "output", type=click.Choice(("text", "json", "yaml")), default="text",
              show_default=True, help="text: the diff and a summary line; json or yaml: the control plane's answer.")
@control_option
def apply(path: str, dry_run: bool, wait: bool, timeout: float, output: str, control: str) -> None:
    """Validate mesh.yaml, show the diff, and make it the mesh's config (a new version)."""
    doc = _send(control, path, dry_run)
    if output == "text":  # what was applied is said before any wait, which may fail
        print_diff(doc["diff"])
        if not doc["changed"]:
            out.print(f"no changes: the config is version {doc['version']}")
        elif dry_run:
            out.print(f"dry run: nothing applied (the config stays version {doc['version']})")
        else:
            out.print(f"applied: version {doc['version']} (sha256 {doc['sha256'][:12]})")
    if wait and not dry_run:
        started = time.monotonic()
        status = wait_for_hosts(control, int(doc["version"]), timeout)
        doc["in_force"] = {"hosts": sorted(h["name"] for h in status["hosts"]),
                           "waited_s": round(time.monotonic() - started, 3)}
    if output == "text":
        if "in_force" in doc:
            n = len(doc["in_force"]["hosts"])
            out.print(f"in force on {n} host{'s' if n != 1 else ''} after {doc['in_force']['waited_s']:.1f} s")
    else:
        emit(doc, output, lambda: None)


@click.command()
@click.option("-f", "--file", "path", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help=_FILE_HELP)
@click.option("-o", "--output", "output", type=click.Choice(("text", "json", "yaml")), default="text",
              show_default=True, help="text: the unified diff; json or yaml: the control plane's answer.")
@control_option
def diff(path: str, output: str, control: str) -> None:
    """Show what applying mesh.yaml would change (validates it too). Exit 1 when it differs, 0 when not."""
    doc = _send(control, path, True)

    def text() -> None:
        if doc["changed"]:
            print_diff(doc["diff"])
        else:
            out.print(f"no changes against version {doc['version']}")

    emit(doc, output, text)
    if doc["changed"]:
        click.get_current_context().exit(DIFFERENT)
