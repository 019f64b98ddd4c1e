"""`-o json|yaml|table` for every read command, and the one way times are written.

The table is for people and may change between releases; json and yaml are
for scripts and carry the control plane's answer as it is, so a script never
parses a table. Times: the API carries Unix seconds, and the CLI writes them
in UTC with a `Z` (ISO 8601), as the control plane's logs do, so that output
from hosts in different zones lines up.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
import yaml

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "json", "yaml")


def output_option(default: str = "table", formats: tuple[str, ...] = FORMATS) -> Callable[[F], F]:
    """Add `-o/--output FORMAT` to a read command (its value arrives as `output`)."""

    def deco(f: F) -> F:
        return click.option("-o", "--output", "output", type=click.Choice(formats), default=default,
                            show_default=True,
                            help="table: for people; json or yaml: the control plane's answer, for scripts.")(f)

    return deco


def emit(doc: Any, fmt: str, table: Callable[[], None]) -> None:
    """Print doc as json or yaml, or call table() to print it for people."""
    if fmt == "json":
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    elif fmt == "yaml":
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        sys.stdout.write(yaml.dump(doc, Dumper=dumper, sort_keys=True, default_flow_style=False, allow_unicode=True))
    else:
        table()


def utc(ts: float | None) -> str:
    """Unix seconds as `2026-12-05T22:00:00Z`; `-` for none."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def utc_logging(level: int, fmt: str = "text") -> None:
    """Log lines as `2026-12-05T22:00:00.123Z INFO name: message` (UTC, like every time the CLI prints),
    or, fmt `json`, one JSON object per line (glassmesh/logfmt.py)."""
    from glassmesh.logfmt import setup_logging

    setup_logging(level, fmt)
