"""`glassmesh install-units`: write the systemd units the package ships, pointing at this glassmesh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

UNITS = ("glassmesh-control.service", "glassmesh-proxy.service")
SHIPPED_EXEC = "/opt/glassmesh/bin/glassmesh"  # ExecStart in the files as shipped: the README's install path
UNIT_DIR = "etc/systemd/system"
SYSUSERS = "etc/sysusers.d/glassmesh.conf"
# Directories the units hide from the service (ProtectHome=yes, PrivateTmp=yes): a glassmesh there cannot start.
HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")


def this_glassmesh() -> str:
    """The command that runs this glassmesh: its console script beside the interpreter, or `python -m glassmesh`."""
    script = Path(sys.executable).parent / "glassmesh"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m glassmesh"


def render(name: str, exe: str) -> str:
    """Unit `name` as shipped, with ExecStart (and the proxy's ExecReload) running `exe`."""
    text = resources.files("glassmesh.systemd").joinpath(name).read_text()
    for key in ("ExecStart", "ExecReload"):
        text = text.replace(f"{key}={SHIPPED_EXEC} ", f"{key}={exe} ")
    return text


def _write(path: Path, text: str) -> None:
    """Write a world-readable file (systemd reads units as any user), replacing it whole; one line if it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        hint = " (run it as root, or give --prefix DIR)" if isinstance(e, PermissionError) else ""
        raise click.ClickException(f"cannot write {path}: {e.strerror or e}{hint}") from None


@click.command("install-units")
@click.option("--prefix", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help=f"Install under DIR instead of /: DIR/{UNIT_DIR}/ and DIR/{SYSUSERS} (for packaging and "
                   "tests; nothing is started or reloaded then).")
@click.option("--exec", "exe", default=None, metavar="PATH",
              help="The glassmesh the units run (default: this one, the console script beside its python).")
def install_units(prefix: str | None, exe: str | None) -> None:
    """Install glassmesh-control.service and glassmesh-proxy.service (systemd) and their user, glassmesh.

    Writes the units to /etc/systemd/system and the user's declaration to
    /etc/sysusers.d/glassmesh.conf, creates the user (systemd-sysusers) and
    reloads systemd. Enabling and starting them is yours: `systemctl enable
    --now glassmesh-proxy` (or glassmesh-control).
    """
    exe = exe or this_glassmesh()
    root = Path(prefix or "/")
    hidden = next((d for d in HIDDEN if exe.startswith(d)), None)
    if hidden:
        click.echo(f"glassmesh install-units: WARNING: {exe} is under {hidden}, which the units hide from the "
                   "service (ProtectHome=yes, PrivateTmp=yes): it would not start. Install glassmesh outside "
                   f"them (python3 -m venv /opt/glassmesh) or give --exec PATH.", err=True)
    written = []
    for name in UNITS:
        path = root / UNIT_DIR / name
        _write(path, render(name, exe))
        written.append(path)
    users = root / SYSUSERS
    _write(users, resources.files("glassmesh.systemd").joinpath("sysusers.conf").read_text())
    written.append(users)
    for p in written:
        click.echo(f"wrote {p}")
    click.echo(f"ExecStart runs {exe}")
    if prefix is None:
        if shutil.which("systemd-sysusers"):
            subprocess.run(["systemd-sysusers", str(users)], check=False)
        if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
            subprocess.run(["systemctl", "daemon-reload"], check=False)
    click.echo("next: put proxy.yaml (and/or control.yaml) in /etc/glassmesh, then "
               "`systemctl enable --now glassmesh-proxy` (or glassmesh-control)")
