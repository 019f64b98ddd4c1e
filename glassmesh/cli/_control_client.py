"""What every operator command shares: finding the control plane, calling it, printing its answers.

The commands are thin clients of the HTTP API, so that they behave the same
against any replica. They use urllib (no event loop to start for one request)
and turn every failure into one line on stderr, with the exit status of its
kind (glassmesh/cli/exits.py: 3 invalid config, 4 refused, 5 unreachable).

`--control URL1,URL2` (or GLASSMESH_CONTROL=URL1,URL2) names replicas of one
control plane: each call tries them in order and takes the first real answer,
skipping one that is unreachable, times out or answers 5xx. Retrying a write
on another replica is safe: an apply of the content already in force commits
nothing, and commits are compare-and-set on the version.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from glassmesh.api import credential
from glassmesh.cli.exits import InvalidConfig, LocalProblem, Refused, Unreachable

__all__ = ["InvalidConfig", "LocalProblem", "Refused", "Unreachable", "call", "control_option", "err", "expect_ok",
           "out", "print_diff", "print_problems"]

DEFAULT_CONTROL = "https://127.0.0.1:4200"
_credential_flag: list[str] = []  # --credential as given to this command (control_option's callback)
F = TypeVar("F", bound=Callable[..., Any])
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _remember_credential(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        _credential_flag[:] = [value]


def control_option(f: F) -> F:
    f = click.option("--credential", metavar="FILE", expose_value=False, callback=_remember_credential,
                     help="Operator credential (certificate, key and mesh CA in one PEM file) [default: "
                          "$GLASSMESH_CREDENTIAL, else ~/.config/glassmesh/operator.pem].")(f)
    return click.option("--control", envvar="GLASSMESH_CONTROL", default=DEFAULT_CONTROL, show_default=True,
                        help="Control-plane API URL, or several replicas' comma-separated, tried in order "
                             "(env GLASSMESH_CONTROL).")(f)


def operator_credential() -> credential.Credential:
    """The credential this command presents; LocalProblem saying where to get one when there is none."""
    path = credential.find(_credential_flag[0] if _credential_flag else None)
    if path is None:
        raise LocalProblem(f"no operator credential: give --credential FILE, set {credential.ENV}, or put one at "
                           f"{credential.default_path()} (the control plane writes the first one to DIR/admin.pem; "
                           f"`glassmesh ca issue --operator NAME` makes more)")
    try:
        return credential.load(path)
    except credential.CredentialError as e:
        raise LocalProblem(str(e)) from None


def control_urls(control: str) -> list[str]:
    """The replicas in `URL1,URL2`, in order, without duplicates."""
    urls: list[str] = []
    for u in (x.strip() for x in control.split(",")):
        if u and u not in urls:
            urls.append(u)
    if not urls:
        raise LocalProblem("no control-plane URL given (--control or GLASSMESH_CONTROL)")
    for u in urls:
        if not u.startswith("https://"):
            raise LocalProblem(f"the operator API speaks TLS: give an https:// control-plane URL, not {u!r}")
    return urls


def call(control: str, method: str, path: str, payload: dict[str, Any] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) from the first replica that gives a real answer; Unreachable when none does.

    A 5xx is returned as is when no later replica answers better, so the
    caller prints the control plane's own reason (e.g. its store is down).
    """
    urls = control_urls(control)
    errors: list[str] = []
    answer: tuple[int, dict[str, Any]] | None = None
    for base in urls:
        try:
            status, doc = _call_one(base, method, path, payload, timeout)
        except Unreachable as e:
            errors.append(e.message)
            continue
        if status < 500:
            return status, doc
        answer = answer or (status, doc)
        errors.append(f"{base} answered {status}")
    if answer is not None:
        return answer
    raise Unreachable(errors[0] if len(errors) == 1 else "; ".join(errors))


def _call_one(control: str, method: str, path: str, payload: dict[str, Any] | None,
              timeout: float) -> tuple[int, dict[str, Any]]:
    cred = operator_credential()
    try:
        status, body = credential.call(control, cred, method, path, payload, timeout)
    except credential.CredentialError as e:
        raise Unreachable(str(e)) from None
    except ssl.SSLError as e:
        raise Unreachable(f"TLS with the control plane at {control} failed: {e.reason or e} (is {cred.path} a "
                           f"credential of this mesh?)") from None
    except OSError as e:
        raise Unreachable(f"cannot reach the control plane at {control}: {e.strerror or e}") from None
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        raise Unreachable(f"{control} answered {status} with something that is not JSON") from None
    return status, doc


def expect_ok(status: int, doc: dict[str, Any]) -> dict[str, Any]:
    """doc when the call succeeded; else Refused (4xx: the control plane said no) or Unreachable (5xx)."""
    if status >= 500:
        raise Unreachable(str(doc.get("error", f"the control plane answered HTTP {status}")))
    if status >= 400:
        raise Refused(str(doc.get("error", f"HTTP {status}")))
    return doc


def print_diff(diff: str) -> None:
    for line in diff.splitlines():
        style = ("bold" if line.startswith(("+++", "---")) else "green" if line.startswith("+")
                 else "red" if line.startswith("-") else "cyan" if line.startswith("@@") else "")
        out.print(Text(line, style=style))


def print_problems(doc: dict[str, Any], filename: str) -> None:
    """Validation errors as `mesh.yaml:12: services[1].port: Expected int, got str`."""
    for p in doc.get("problems", []):
        err.print(Text(f"{filename}:{p['line']}: {p['field'] or '(top)'}: {p['message']}", style="red"))
