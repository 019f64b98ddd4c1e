"""The declarative mesh config (mesh.yaml): schema, validation with line numbers, canonical form.

The operator edits YAML; the control plane stores the validated document and
compiles snapshots from it. Validation is strict (unknown fields are errors)
because a misspelt key that is silently ignored is how a safe default turns
into an outage. Every problem names the file, the line and the field, so the
operator fixes it without guessing. The canonical form (keys sorted, list
order kept because it carries meaning) makes diffs and content hashes stable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from glassmesh.control import yamlpos
from glassmesh.control.collect import collect
from glassmesh.control.rules import check_meaning
from glassmesh.control.schema import (
    LABEL_KEY_RE,
    LABEL_VALUE_RE,
    Dns,
    Health,
    HostConfig,
    HostService,
    Labels,
    MeshConfig,
    ServiceConfig,
    StaticInstance,
    TcpLinkConfig,
)
from glassmesh.model.snapshot import NAME_RE

# The schema's names stay importable from here (the parser's callers used them from this module first).
__all__ = ["LABEL_KEY_RE", "LABEL_VALUE_RE", "ConfigError", "Dns", "Health", "HostConfig", "HostService", "Labels",
           "MeshConfig", "Problem", "ServiceConfig", "StaticInstance", "TcpLinkConfig", "canonical_json",
           "canonical_yaml", "diff_docs", "from_doc", "parse_config", "sha256_of", "to_doc"]


@dataclass(frozen=True)
class Problem:
    """One validation error: where (line, field path) and what."""

    line: int
    path: str
    message: str

    def format(self, filename: str) -> str:
        return f"{filename}:{self.line}: {self.path or '(top)'}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.path, "message": self.message}


class ConfigError(ValueError):
    """The config is invalid; `problems` lists every error found, each with line and field."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.format(filename) for p in problems))


def _friendly(msg: str) -> str:
    msg = msg.replace(f"matching regex '{NAME_RE}'", "that is a lowercase DNS label (a-z, 0-9, -)")
    msg = msg.replace(f"matching regex '{LABEL_KEY_RE}'", "that is a label name (letters, digits, - _ . /; "
                                                           "at most 63)")
    msg = msg.replace(f"matching regex '{LABEL_VALUE_RE}'", "that is a label value (letters, digits, - _ .; "
                                                             "at most 63)")
    msg = re.sub(r"matching regex '[^']*'", "in the form host:port", msg) if "regex" in msg else msg
    return msg.replace("`", "").replace(" | null", "")


def _problem(root: yaml.Node | None, path: str, message: str) -> Problem:
    """A schema problem at the line of its field (an unknown key's own line; a missing one's parent)."""
    return Problem(yamlpos.line_of(root, path), path, _friendly(message))


def parse_config(text: str, filename: str = "mesh.yaml") -> MeshConfig:
    """Parse and validate mesh.yaml text; raise ConfigError naming every problem found."""
    try:
        root, data = yamlpos.load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(filename, [Problem(line, "", f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    problems = [Problem(line, path, "duplicate key") for path, line in yamlpos.duplicate_keys(root)]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(filename, [*problems, Problem(1, "", "the config must be a mapping (services:, hosts:, "
                                                               "tcp_links:)")])
    # Section by section, item by item: every schema problem, not only the first msgspec meets.
    short, lossy = _short_host_services(data, problems, root)
    found = collect(short, MeshConfig)
    problems += [_problem(root, path, msg) for path, msg in found.problems]
    if found.lossy or lossy:  # an item could not be read: references to it would be reported wrongly
        raise ConfigError(filename, problems)
    cfg = msgspec.convert(found.value, MeshConfig, strict=True)
    problems += [Problem(yamlpos.line_of(root, p), p, m) for p, m in check_meaning(cfg)]
    if problems:
        raise ConfigError(filename, sorted(problems, key=lambda p: p.line))
    return cfg


def _short_host_services(data: dict[str, Any], problems: list[Problem] | None = None,
                         root: yaml.Node | None = None) -> tuple[dict[str, Any], bool]:
    """The document with each host's long `services:` items made names, their labels moved to service_labels.

    Problems in the long items (and a `service_labels:` written by hand, which
    is internal) are added to `problems`; True when an item could not be read.
    """
    hosts = data.get("hosts")
    if not isinstance(hosts, list) or not any(isinstance(h, dict) and (
            "service_labels" in h or any(isinstance(x, dict) for x in h.get("services") or [])) for h in hosts):
        return data, False
    lossy = False
    out_hosts: list[Any] = []
    for i, h in enumerate(hosts):
        if not isinstance(h, dict):
            out_hosts.append(h)
            continue
        h = dict(h)
        if problems is not None and "service_labels" in h:
            problems.append(_problem(root, f"hosts[{i}].service_labels",
                                     "Object contains unknown field `service_labels` (give labels in services: "
                                     "as {name: b, labels: {version: v2}})"))
            del h["service_labels"]
        items = h.get("services")
        if isinstance(items, list):
            names: list[Any] = []
            labels: dict[str, Any] = {}
            for j, item in enumerate(items):
                if not isinstance(item, dict):
                    names.append(item)
                    continue
                got = collect(item, HostService)
                if problems is not None:
                    problems += [_problem(root, f"hosts[{i}].services[{j}].{p}" if p else f"hosts[{i}].services[{j}]",
                                          m) for p, m in got.problems]
                if got.lossy:
                    lossy = True
                    continue
                names.append(got.value["name"])
                if got.value.get("labels"):
                    labels[got.value["name"]] = got.value["labels"]
            h["services"] = names
            if labels:
                h["service_labels"] = labels
        out_hosts.append(h)
    return {**data, "hosts": out_hosts}, lossy


def from_doc(doc: dict[str, Any]) -> MeshConfig:
    """A stored (already validated) document back into a MeshConfig."""
    return msgspec.convert(_short_host_services(doc)[0], MeshConfig, strict=True)


def to_doc(cfg: MeshConfig) -> dict[str, Any]:
    """The JSON-able document stored for a config (defaults omitted, so they can change later).

    A host's service labels go back into its `services:` items, as the operator wrote them.
    """
    doc: dict[str, Any] = msgspec.to_builtins(cfg)
    for h in doc.get("hosts", ()):
        labels = h.pop("service_labels", None)
        if labels:
            h["services"] = [{"name": n, "labels": labels[n]} if n in labels else n for n in h["services"]]
    return doc


def canonical_yaml(doc: dict[str, Any] | None) -> str:
    if not doc:
        return ""
    # libyaml's dumper when there is one: the pure-Python one took a second for a 1,000-service mesh.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(doc, Dumper=dumper, sort_keys=True, default_flow_style=False, allow_unicode=True)


def canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_of(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def diff_docs(old: dict[str, Any] | None, new: dict[str, Any] | None, old_name: str = "current",
              new_name: str = "new") -> str:
    """Unified diff of the canonical YAML of two documents ("" when they are the same)."""
    a = canonical_yaml(old).splitlines(keepends=True)
    b = canonical_yaml(new).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, old_name, new_name))
