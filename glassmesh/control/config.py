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
from typing import Annotated, Any, Literal

import msgspec
import yaml

from glassmesh.control import yamlpos
from glassmesh.control.collect import collect
from glassmesh.control.rules import LABEL_KEY_RE, LABEL_VALUE_RE, check_meaning
from glassmesh.model.snapshot import (
    NAME_RE,
    Address,
    Name,
    Outlier,
    Policy,
    Protocol,
    RetryBudget,
    Route,
    ServiceLimits,
    Subset,
)

_S = {"forbid_unknown_fields": True, "frozen": True, "kw_only": True, "omit_defaults": True}
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
DnsName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})$")]


class Health(msgspec.Struct, **_S):
    """How the proxy on an instance's host checks it: TCP connect, or an HTTP GET expecting 2xx."""

    tcp: bool = False  # check by TCP connect (the default when `http` is not set)
    http: str | None = None  # check by an HTTP GET of this path, expecting 2xx
    interval_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 2_000  # time between two checks
    timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=600_000)] = 1_000  # a check that takes longer fails


Labels = dict[Annotated[str, msgspec.Meta(pattern=LABEL_KEY_RE)], Annotated[str, msgspec.Meta(pattern=LABEL_VALUE_RE)]]


class StaticInstance(msgspec.Struct, **_S):
    """An instance listed by hand."""

    host: Name  # the host it runs on (its proxy checks it and carries its traffic)
    address: Address  # where it listens on that host
    labels: Labels = {}  # labels of this instance, which subsets select it by (routes: split:)


class HostService(msgspec.Struct, **_S):
    """A host's `services:` item in its long form: `{name: b, labels: {version: v2}}`."""

    name: Name
    labels: Labels = {}


class Dns(msgspec.Struct, **_S):
    """Instances found by resolving a name (A: host ip + service port; SRV: targets and ports)."""

    name: DnsName  # the DNS name to resolve
    type: Literal["A", "SRV"] = "A"  # the record type


class ServiceConfig(msgspec.Struct, **_S):
    """A service: what it speaks, where its instances are, and whom it may call."""

    name: Name  # the service's name, also its identity (spiffe://TRUST_DOMAIN/service/NAME)
    protocol: Protocol = "http"  # http (requests routed, retried, counted) or tcp (bytes carried as they are)
    port: Port | None = None  # where instances listen on their host
    health: Health | None = None  # how instances are checked; unset: a TCP connect check
    instances: list[StaticInstance] = []  # instances listed by hand
    dns: Dns | None = None  # instances found by DNS
    # Services this one may call; None means every service for an http one and none for a tcp one.
    # A host's snapshot lists only these; one that calls nothing (`calls: []`) gets no outbound listener.
    calls: list[Name] | None = None
    # Share of endpoints one change may remove before it is held for an operator.
    max_endpoint_drop: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5
    # Traffic policy toward this service, applied by every calling proxy (http services only).
    subsets: list[Subset] = []
    routes: list[Route] = []  # first match wins; a request no route takes goes to every instance
    balance: Literal["p2c_ewma", "round_robin"] = "p2c_ewma"
    retry_budget: RetryBudget = RetryBudget()
    outlier: Outlier | None = Outlier()  # null: never eject
    limits: ServiceLimits = ServiceLimits()

    def policy(self) -> Policy | None:
        """The snapshot's policy for this service; None when mesh.yaml sets none of it (today's snapshots)."""
        pol = Policy(subsets=self.subsets, routes=self.routes, balance=self.balance, retry_budget=self.retry_budget,
                     outlier=self.outlier, limits=self.limits)
        return None if pol == _NO_POLICY else pol


class HostConfig(msgspec.Struct, **_S):
    """A host that runs a proxy."""

    name: Name  # the host's name, also its identity (spiffe://TRUST_DOMAIN/host/NAME)
    address: Address  # its proxy's inbound (mTLS) port
    admin: Address | None = None  # default: the inbound ip, port 4191
    # In mesh.yaml each item is a name, or {name: b, labels: {version: v2}}; parse_config keeps the
    # names here and the labels in service_labels (to_doc writes them back in the long form).
    services: list[Name] = []  # the services with instances (or callers) on this host
    # Pin a local service's outbound listener; default: the inbound ip, ports 4140, 4141, ... in list order.
    outbound: dict[Name, Address] = {}
    service_labels: dict[Name, Labels] = {}


class TcpLinkConfig(msgspec.Struct, **_S):
    """A local port on a host that carries raw TCP from a local service to a destination service."""

    host: Name  # the host whose proxy listens
    source: Name  # the local service that connects (the identity the destination sees)
    listen: Address  # where the proxy listens for it
    destination: Name  # the service it reaches


class MeshConfig(msgspec.Struct, **_S):
    services: list[ServiceConfig] = []  # every service of the mesh
    hosts: list[HostConfig] = []  # every host that runs a proxy (hosts that join with a token may be left out)
    tcp_links: list[TcpLinkConfig] = []  # local ports that carry raw TCP to a service (redis, a database)

    def service(self, name: str) -> ServiceConfig | None:
        return next((s for s in self.services if s.name == name), None)

    def host(self, name: str) -> HostConfig | None:
        return next((h for h in self.hosts if h.name == name), None)


_NO_POLICY = Policy()


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
