"""`glassmesh ca`: create the root, issue leaves, show the CA. Presentation only.

All certificate logic lives in `glassmesh.ca`; this module turns its errors
into one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from glassmesh.ca import CA, CAError, init_ca, load_ca
from glassmesh.ca.bundle import make_private_dirs, write_trust_bundle
from glassmesh.ca.signer import Kind


class CACommandError(click.ClickException):
    """A CA problem reported as `Error: ...` on stderr with exit code 2."""

    exit_code = 2


def _fail(e: Exception | str) -> CACommandError:
    return CACommandError(str(e))


def _expiry(dt: datetime) -> str:
    left = dt - datetime.now(UTC)
    if left.total_seconds() <= 0:
        return f"{dt:%Y-%m-%d %H:%M:%S} UTC (expired)"
    days, rem = divmod(int(left.total_seconds()), 86400)
    hours, minutes = rem // 3600, rem % 3600 // 60
    when = f"{days}d {hours}h" if days else f"{hours}h {minutes}m"
    return f"{dt:%Y-%m-%d %H:%M:%S} UTC (in {when})"


def _describe(ca: CA) -> None:
    click.echo(f"trust domain: {ca.trust_domain}")
    click.echo(f"fingerprint:  SHA256 {ca.fingerprint}")
    click.echo(f"expires:      {_expiry(ca.not_after)}")


_dir_option = click.option(
    "--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory holding ca.pem, ca.key and trust-domain.",
)


@click.group()
def ca() -> None:
    """The built-in certificate authority: SPIFFE identities for services and hosts."""


@ca.command("init")
@_dir_option
@click.option("--trust-domain", default="glassmesh.local", show_default=True, help="SPIFFE trust domain.")
@click.option("--days", default=3650, show_default=True, type=click.IntRange(min=1), help="Root lifetime in days.")
@click.option("--force", is_flag=True, help="Replace an existing CA (invalidates every certificate it issued).")
def init_cmd(directory: Path, trust_domain: str, days: int, force: bool) -> None:
    """Create a self-signed root CA in DIR."""
    try:
        new = init_ca(directory, trust_domain=trust_domain, days=days, force=force)
    except (CAError, ValueError) as e:
        raise _fail(e) from None
    click.echo(f"created CA in {directory}")
    click.echo(f"  certificate:  {directory / 'ca.pem'}")
    click.echo(f"  private key:  {directory / 'ca.key'} (mode 0600)")
    click.echo(f"  trust domain: {directory / 'trust-domain'}")
    _describe(new)


@ca.command("issue")
@click.option(
    "--dir", "directory", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="The CA to sign with: for a mesh run by `glassmesh control --data DATA`, its DATA/ca (the CA the "
         "control plane made on first start, whose root every proxy trusts), not one of your own.",
)
@click.option("--service", metavar="NAME", help="Issue a service identity: spiffe://TD/service/NAME.")
@click.option("--host", metavar="NAME", help="Issue a host (proxy) identity: spiffe://TD/host/NAME.")
@click.option("--operator", metavar="NAME",
              help="Issue an operator credential (spiffe://TD/operator/NAME, with --role) for the CLI: one file "
                   "with the certificate, its key and the CA [default --out: DIR/operator-NAME.pem].")
@click.option("--role", type=click.Choice(["admin", "read-only"]), default=None,
              help="An operator's role: admin changes the mesh, read-only reads it.")
@click.option("--out", "prefix", type=click.Path(dir_okay=False, path_type=Path),
              help="Write PREFIX.pem and PREFIX.key, and the CA's root as ca.pem beside them, creating missing "
                   "directories (mode 0700): --out PROXYDATA/certs/web leaves a certs dir a proxy can use "
                   "[default: DIR/<kind>-<name>]. With --operator: the credential file [default: "
                   "DIR/operator-NAME.pem].")
@click.option("--hours", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Leaf lifetime in hours [default: 24; operators 720].")
def issue_cmd(directory: Path, service: str | None, host: str | None, operator: str | None, role: str | None,
              prefix: Path | None, hours: float | None) -> None:
    """Issue a leaf certificate and key signed by the CA in DIR (and put the CA's ca.pem beside them).

    For hosts that join with a token (`glassmesh host add`), the proxy gets its certificates itself:
    this is for proxies given certificate files by hand (tests, `--control http://...`), and for
    operators' credentials (--operator NAME --role ROLE).
    """
    if operator is not None:
        if service is not None or host is not None:
            raise click.UsageError("give exactly one of --service NAME, --host NAME or --operator NAME")
        if role is None:
            raise click.UsageError("--operator needs --role admin or --role read-only")
        _issue_operator(directory, operator, role, prefix, hours or 720.0)
        return
    if role is not None:
        raise click.UsageError("--role goes with --operator")
    hours = hours or 24.0
    if (service is None) == (host is None):
        raise click.UsageError("give exactly one of --service NAME, --host NAME or --operator NAME")
    kind: Kind = "service" if service is not None else "host"
    name = service if service is not None else host
    assert name is not None
    bundle = None
    try:
        authority = load_ca(directory)
        leaf = authority.issue(kind, name, hours=hours)
        if prefix is not None:
            make_private_dirs(prefix.parent)
            if prefix.parent.resolve() != directory.resolve():
                bundle = write_trust_bundle(prefix.parent, authority)
        cert_path, key_path = leaf.write(prefix if prefix is not None else directory / f"{kind}-{name}")
    except (CAError, ValueError) as e:
        raise _fail(e) from None
    except OSError as e:
        raise _fail(f"cannot write certificate files: {e.strerror or e}") from None
    click.echo(f"issued {leaf.spiffe_id}")
    click.echo(f"  certificate: {cert_path}")
    click.echo(f"  private key: {key_path} (mode 0600)")
    if bundle is not None:
        click.echo(f"  trust:       {bundle} (the CA's root, SHA256 {authority.fingerprint[:23]}...)")
    click.echo(f"  expires:     {_expiry(leaf.not_after)}")


def _issue_operator(directory: Path, name: str, role: str, out: Path | None, hours: float) -> None:
    from glassmesh.api import credential

    try:
        authority = load_ca(directory)
        leaf = authority.issue("operator", name, hours=hours, role=role)
        assert leaf.key_pem is not None
        path = credential.write(out if out is not None else directory / f"operator-{name}.pem", leaf.fullchain_pem,
                                leaf.key_pem, authority.cert_pem,
                                f"glassmesh operator credential: {leaf.spiffe_id} ({role})")
    except (CAError, ValueError) as e:
        raise _fail(e) from None
    except OSError as e:
        raise _fail(f"cannot write the credential: {e.strerror or e}") from None
    click.echo(f"issued {leaf.spiffe_id} ({role})")
    click.echo(f"  credential: {path} (mode 0600: certificate, key and CA; point --credential or "
               f"GLASSMESH_CREDENTIAL at it, or copy it to {credential.default_path()})")
    click.echo(f"  expires:    {_expiry(leaf.not_after)}")


@ca.command("show")
@_dir_option
def show_cmd(directory: Path) -> None:
    """Show the CA in DIR: trust domain, root fingerprint, expiry."""
    try:
        authority = load_ca(directory)
    except CAError as e:
        raise _fail(e) from None
    click.echo(f"CA in {directory}")
    _describe(authority)
