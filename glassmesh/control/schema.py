"""The shape of mesh.yaml: its structs and their limits, with nothing that checks meaning.

Apart from config.py (parsing, validation, canonical form) so that the modules
that check meaning and lay hosts out (rules.py, layout.py) can name these types
without importing the parser that imports them: no import circle.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from glassmesh.model.snapshot import (
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

# Labels (instances' and subsets'): Kubernetes' shape, so that labels copied from there are valid here.
LABEL_KEY_RE = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_RE = r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$"

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
