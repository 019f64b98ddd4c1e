"""`glassmesh control backup FILE` and `glassmesh control restore FILE` (see glassmesh/control/backup.py).

`glassmesh control [OPTIONS]` runs a replica (cli/control_cmd.py); this module puts the two
subcommands beside it: `control` becomes a group whose bare form is still the replica.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import click

from glassmesh.cli.control_cmd import control as run_control

PASSPHRASE_ENV = "GLASSMESH_BACKUP_PASSPHRASE"


def _passphrase(passphrase_file: str | None) -> bytes:
    from glassmesh.files import InsecureFile, check_private

    if passphrase_file:
        try:
            check_private(passphrase_file, "backup passphrase file")
            return Path(passphrase_file).read_bytes().strip()
        except (InsecureFile, OSError) as e:
            raise click.ClickException(str(e)) from None
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV].encode()
    raise click.UsageError(f"give the backup passphrase: --passphrase-file FILE (mode 0600) or {PASSPHRASE_ENV}")


def _store_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
                     help="The control plane's data dir (DIR/ca holds the CA; the SQLite store is DIR/control.sqlite)."),
        click.option("--store", "store_spec", default="sqlite", show_default=True,
                     help="As `glassmesh control --store`: 'sqlite', or etcds://host:port[,...] (etcd://: loopback)."),
        click.option("--etcd-ca", type=click.Path(dir_okay=False, exists=True), default=None),
        click.option("--etcd-cert", type=click.Path(dir_okay=False, exists=True), default=None),
        click.option("--etcd-key", type=click.Path(dir_okay=False, exists=True), default=None),
        click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True), default=None,
                     help=f"File (mode 0600) with the passphrase that encrypts the backup's secrets; "
                          f"or set {PASSPHRASE_ENV}."),
    ]):
        f = opt(f)
    return f


def _run(data_dir: str, store_spec: str, etcd: tuple[str | None, str | None, str | None], job: Any) -> Any:
    from glassmesh.control.backup import BackupError
    from glassmesh.control.server import EtcdTls, StartupError, open_store
    from glassmesh.control.store import StoreError

    async def go() -> Any:
        store = open_store(store_spec, data_dir, EtcdTls(*etcd) if etcd[0] else None)  # type: ignore[arg-type]
        try:
            return await job(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except (BackupError, StartupError, StoreError) as e:
        raise click.ClickException(str(e)) from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_store_options
@click.option("--force", is_flag=True, help="Overwrite FILE if it exists.")
def backup(file: str, data_dir: str, store_spec: str, etcd_ca: str | None, etcd_cert: str | None,
           etcd_key: str | None, passphrase_file: str | None, force: bool) -> None:
    """Write the control plane's state to FILE (0600): every config version, hosts, records, and the CA.

    Reads the store and DIR/ca directly (the same access the control plane has), so it runs while the
    control plane serves. The CA key is encrypted with the passphrase; keep the two apart.
    """
    from glassmesh.control.backup import BackupError, check_passphrase, make_backup

    if os.path.exists(file) and not force:
        raise click.ClickException(f"{file} exists; give --force to overwrite it")
    passphrase = _passphrase(passphrase_file)
    try:
        check_passphrase(passphrase)
    except BackupError as e:
        raise click.ClickException(str(e)) from None
    # A backup reads; it never makes a data dir or a store where there was none.
    for need in ([os.path.join(data_dir, "ca")] +
                 ([os.path.join(data_dir, "control.sqlite")] if store_spec == "sqlite" else [])):
        if not os.path.exists(need):
            raise click.ClickException(f"no control plane state to back up: {need} does not exist")

    async def job(store: Any) -> tuple[bytes, dict[str, Any]]:
        data = await make_backup(store, os.path.join(data_dir, "ca"), passphrase, store_spec.split("://")[0])
        return data, await store.export_state()

    data, state = _run(data_dir, store_spec, (etcd_ca, etcd_cert, etcd_key), job)
    _run_write(file, data)
    versions = state["versions"]
    click.echo(f"wrote {file}: {len(versions)} config version(s) (current: "
               f"{versions[-1]['version'] if versions else 0}), {len(state['hosts'])} host(s), the CA")


def _run_write(file: str, data: bytes) -> None:
    from glassmesh.control.backup import BackupError, write_backup

    try:
        write_backup(file, data)
    except BackupError as e:
        raise click.ClickException(str(e)) from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@_store_options
@click.option("--force", is_flag=True, help="Replace a store that holds state, and a DIR/ca with another CA.")
def restore(file: str, data_dir: str, store_spec: str, etcd_ca: str | None, etcd_cert: str | None,
            etcd_key: str | None, passphrase_file: str | None, force: bool) -> None:
    """Restore FILE into a stopped control plane's store and DIR/ca; then start it as before.

    Refuses a store that holds anything, and a DIR/ca with another CA, unless --force. A wrong
    passphrase or an altered file is refused before anything is written.
    """
    from glassmesh.control.backup import BackupError, open_backup
    from glassmesh.control.backup import restore as do_restore
    from glassmesh.files import private_dir

    passphrase = _passphrase(passphrase_file)
    try:
        opened = open_backup(Path(file).read_bytes(), passphrase, file)
    except BackupError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot read {file}: {e.strerror or e}") from None
    private_dir(data_dir)
    said = _run(data_dir, store_spec, (etcd_ca, etcd_cert, etcd_key),
                lambda store: do_restore(store, os.path.join(data_dir, "ca"), opened, force))
    for line in said:
        click.echo(line)


class _ControlGroup(click.Group):
    """`glassmesh control [OPTIONS]` runs a replica as before; `control backup|restore` are subcommands.

    It shows the replica's options (in --help and in whatever lists commands and flags) but parses
    nothing itself: a subcommand goes through a bare group, anything else to the replica's command.
    """

    def __init__(self, run: click.Command, commands: dict[str, click.Command]) -> None:
        super().__init__(name=run.name, commands=commands, help=run.help, epilog=run.epilog,
                         params=run.params, context_settings=dict(run.context_settings))
        self.run = run
        self.bare = click.Group(name=run.name, commands=commands)

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if args and args[0] in self.commands:
            return self.bare.make_context(info_name, args, parent=parent, **extra)
        return self.run.make_context(info_name, args, parent=parent, **extra)


run_control.epilog = ("Also: `glassmesh control backup FILE` and `glassmesh control restore FILE` "
                      "(each with --help).")
control = _ControlGroup(run_control, {"backup": backup, "restore": restore})
