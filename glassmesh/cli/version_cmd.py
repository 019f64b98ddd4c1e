"""`glassmesh version`: this client's release, the control plane's, and every proxy's, with their builds.

During a rolling upgrade an operator needs to see which hosts already run
the new release and which still run the old one, and whether any proxy runs
the slow pure-Python build; this gathers it in one place. The control plane
part is best effort: without a credential or a reachable replica the command
still prints the client's line and says why the rest is missing.
"""

from __future__ import annotations

import platform
from typing import Any

import click
from rich.table import Table

from glassmesh import __version__
from glassmesh.cli._control_client import call, control_option, err, expect_ok, out
from glassmesh.cli.exits import CliError
from glassmesh.cli.output import emit, output_option


def _client() -> dict[str, Any]:
    from glassmesh.buildinfo import hot_path

    return {"version": __version__, "build": hot_path(), "python": platform.python_version()}


def _mesh(control: str) -> tuple[dict[str, Any] | None, CliError | None]:
    """(control plane and proxies, None), or (None, why they could not be asked)."""
    try:
        ctl = expect_ok(*call(control, "GET", "/v1/version"))
        status = expect_ok(*call(control, "GET", "/v1/status"))
    except CliError as e:
        return None, e
    proxies = []
    for h in status["hosts"]:
        p = h.get("proxy") or {}  # what the proxy said of itself on its last call (api/wire.py headers)
        proxies.append({"host": h["name"], "version": p.get("build") or "unknown", "wire": p.get("wire"),
                        "build": h.get("hot_path") or "unknown", "snapshot": h.get("running")})
    return {"control_plane": ctl, "proxies": proxies}, None


@click.command()
@click.option("--client", "client_only", is_flag=True, help="Only this client's version; ask nobody.")
@output_option()
@control_option
def version(client_only: bool, output: str, control: str) -> None:
    """This client's version and build, the control plane's, and each proxy's (from its reports)."""
    doc: dict[str, Any] = {"client": _client()}
    why = None
    if not client_only:
        mesh, why = _mesh(control)
        if mesh is not None:
            doc.update(mesh)
        else:
            doc["control_plane"] = None
            doc["error"] = why.message if why else None

    def table() -> None:
        c = doc["client"]
        out.print(f"client         glassmesh {c['version']} (hot path: {c['build']}, Python {c['python']})")
        if client_only:
            return
        cp = doc.get("control_plane")
        if cp is None:
            return
        out.print(f"control plane  glassmesh {cp['version']} (replica {cp['replica']}, Python {cp['python']})")
        t = Table("host", "version", "wire", "hot path", "snapshot", box=None, title="proxies", title_justify="left")
        for p in doc["proxies"]:
            t.add_row(p["host"], p["version"], str(p["wire"] if p["wire"] is not None else "-"), p["build"],
                      str(p["snapshot"] or "-"))
        out.print(t)

    emit(doc, output, table)
    if why is not None:
        # The client's part is printed; the exit status says why the rest is missing.
        if output != "table":
            err.print(f"error: {why.message}")
            click.get_current_context().exit(why.exit_code)
        raise why
