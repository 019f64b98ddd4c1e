"""Build a whole mesh on one machine: a CA, a cert per service per host, a snapshot per host.

The demo and the end-to-end tests both need "N hosts on loopback addresses,
these services on them, who calls whom", and both need the same files a real
control plane would hand out. This module turns that short description into
those files plus a `topology.json` (addresses only, for people and scripts),
and returns a `Topology` so Python callers need not re-read it.

Nothing here starts a process; see `procs.py` and `runner.py` for that.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from glassmesh.files import private_dir
from glassmesh.model.snapshot import load_snapshot

DEFAULT_PORTS = (4140, 4143, 4191)  # outbound (first), inbound, admin
# What a control-plane build adds to state_dir (removed, with the rest, by the next build).
_CONTROL_ENTRIES = ("control", "mesh.yaml")


class TopologyError(ValueError):
    """The topology description does not make sense (unknown names, clashing addresses)."""


@dataclass(frozen=True)
class LocalSpec:
    """A service with instances (or callers) on one host.

    instances: ports on the host's address, or full "ip:port" strings.
    outbound: whether this service's apps call the mesh (gets an outbound listener).
    """

    name: str
    protocol: str = "http"
    instances: Sequence[int | str] = ()
    outbound: bool = True
    # Under a control plane: the labels of this host's instances (mesh.yaml's long `services:` item),
    # which subsets select on, e.g. {"version": "v2"}.
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostSpec:
    """One host: a loopback address (one proxy) and the services it runs.

    The ports default to `build_topology(ports=...)`; set them to give one host
    different ports (tests that must not collide with a running demo).
    """

    name: str
    address: str
    services: Sequence[LocalSpec] = ()
    outbound_port: int | None = None
    inbound_port: int | None = None
    admin_port: int | None = None


@dataclass(frozen=True)
class HostInfo:
    """What was built for one host; every path is absolute."""

    name: str
    address: str
    inbound: str
    admin: str
    outbound: dict[str, str]  # local service -> its outbound listener
    local_services: list[str]
    instances: dict[str, list[str]]  # local service -> its instance addresses on this host
    tcp_links: list[dict[str, str]]
    snapshot: str
    dir: str
    certs: dict[str, tuple[str, str]]  # local service -> (cert path, key path)
    trust_bundle: str


@dataclass(frozen=True)
class Instance:
    host: str
    address: str


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    protocol: str
    instances: list[Instance]


@dataclass
class Topology:
    """The built mesh, for programmatic use (the same content as topology.json, plus the CA)."""

    state_dir: str
    trust_domain: str
    ca_dir: str
    ca_cert: str
    path: str  # topology.json
    hosts: dict[str, HostInfo]
    services: dict[str, ServiceInfo]
    ca: Any = field(default=None, repr=False)  # glassmesh.ca.CA, to issue more certs in tests
    # Under a control plane (build_control_topology): its URL, its data dir and the mesh.yaml applied.
    control: str | None = None
    control_dir: str | None = None
    mesh_yaml: str | None = None

    def host(self, name: str) -> HostInfo:
        return self.hosts[name]

    def host_of(self, service: str) -> list[HostInfo]:
        """The hosts that run instances of (or callers as) `service`."""
        return [h for h in self.hosts.values() if service in h.local_services]

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "trust_domain": self.trust_domain,
            "state_dir": self.state_dir,
            "ca_cert": self.ca_cert,
        }
        if self.control is not None:
            doc["control"] = {"url": self.control, "data": self.control_dir, "mesh_yaml": self.mesh_yaml}
        return doc | {
            "hosts": {
                h.name: {
                    "address": h.address,
                    "outbound": h.outbound,
                    "inbound": h.inbound,
                    "admin": h.admin,
                    "local_services": h.local_services,
                    "instances": h.instances,
                    "tcp_links": h.tcp_links,
                    "snapshot": h.snapshot,
                    **({"data": h.dir} if self.control is not None else {}),
                    "certs": {s: {"cert": c, "key": k} for s, (c, k) in h.certs.items()},
                }
                for h in self.hosts.values()
            },
            "services": {
                s.name: {
                    "protocol": s.protocol,
                    "instances": [{"host": i.host, "address": i.address} for i in s.instances],
                }
                for s in self.services.values()
            },
        }


def _addr(ip: str, port: int | str) -> str:
    if isinstance(port, str):
        return port
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _issue_service_cert(ca: Any, name: str, prefix: str) -> tuple[str, str]:
    leaf = ca.issue("service", name)
    cert, key = leaf.write(prefix)
    return os.fspath(cert), os.fspath(key)


def _clear_previous(state_dir: str, host_names: Iterable[str]) -> None:
    """Remove what an earlier build left in state_dir, and only that.

    A non-empty directory that is not an earlier build is refused, so that a
    mistyped --state-dir never deletes someone's files.
    """
    os.makedirs(state_dir, exist_ok=True)
    entries = set(os.listdir(state_dir))
    if not entries:
        return
    if "topology.json" not in entries:
        raise TopologyError(
            f"{state_dir} is not empty and holds no topology.json from an earlier build; "
            "give an empty or new directory"
        )
    for name in ["ca", *host_names, *_CONTROL_ENTRIES]:
        p = os.path.join(state_dir, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.isfile(p):
            os.unlink(p)
    os.unlink(os.path.join(state_dir, "topology.json"))


def build_topology(
    state_dir: str | os.PathLike[str],
    hosts: Sequence[HostSpec],
    *,
    trust_domain: str = "glassmesh.local",
    tcp_links: Sequence[tuple[str, str, int | str, str]] = (),
    ports: tuple[int, int, int] = DEFAULT_PORTS,
    calls: dict[str, list[str]] | None = None,
    version: int = 1,
) -> Topology:
    """Write a CA, certs, one snapshot per host and topology.json under state_dir.

    tcp_links: (host, source service, listen port or "ip:port", destination service).
    calls: source service -> services it calls; a host's snapshot lists the
    services its local services call (and its tcp links' destinations).
    None means every host may call every service.
    """
    from glassmesh.ca import init_ca  # imported here: the CA pulls in cryptography

    state_dir = os.path.abspath(os.fspath(state_dir))
    _validate(hosts, tcp_links, calls)
    _clear_previous(state_dir, [h.name for h in hosts])

    ca_dir = os.path.join(state_dir, "ca")
    ca = init_ca(ca_dir, trust_domain)
    ca_pem: bytes = ca.cert_pem
    out_base, in_port, admin_port = ports

    # Services across hosts: protocol and instances (host inbound repeated per instance).
    services: dict[str, ServiceInfo] = {}
    for h in hosts:
        for ls in h.services:
            svc = services.setdefault(ls.name, ServiceInfo(ls.name, ls.protocol, []))
            if svc.protocol != ls.protocol:
                raise TopologyError(f"service {ls.name!r} is {svc.protocol} on one host and {ls.protocol} on {h.name}")
            svc.instances.extend(Instance(h.name, _addr(h.address, p)) for p in ls.instances)

    links_by_host: dict[str, list[dict[str, str]]] = {h.name: [] for h in hosts}
    for host, source, listen, dest in tcp_links:
        addr = next(x.address for x in hosts if x.name == host)
        links_by_host[host].append({"source": source, "listen": _addr(addr, listen), "destination": dest})

    inbound_of = {x.name: _addr(x.address, x.inbound_port or in_port) for x in hosts}
    infos: dict[str, HostInfo] = {}
    for h in hosts:
        infos[h.name] = _build_host(
            state_dir, h, ca, ca_pem, trust_domain, version, services, inbound_of, links_by_host[h.name],
            calls, (h.outbound_port or out_base, h.inbound_port or in_port, h.admin_port or admin_port),
        )

    topo = Topology(
        state_dir=state_dir,
        trust_domain=trust_domain,
        ca_dir=ca_dir,
        ca_cert=os.path.join(ca_dir, "ca.pem"),
        path=os.path.join(state_dir, "topology.json"),
        hosts=infos,
        services=services,
        ca=ca,
    )
    if not os.path.isfile(topo.ca_cert):  # the CA keeps its cert elsewhere: give scripts one known path
        with open(topo.ca_cert, "wb") as f:
            f.write(ca_pem)
    with open(topo.path, "w") as f:
        json.dump(topo.to_json(), f, indent=2)
        f.write("\n")
    return topo


def _validate(
    hosts: Sequence[HostSpec],
    tcp_links: Sequence[tuple[str, str, int | str, str]],
    calls: dict[str, list[str]] | None,
) -> None:
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise TopologyError(f"duplicate host names in {names}")
    for h in hosts:
        local = [s.name for s in h.services]
        if len(set(local)) != len(local):
            raise TopologyError(f"host {h.name}: a service is listed twice in {local}")
    all_services = {s.name for h in hosts for s in h.services}
    for src, dsts in (calls or {}).items():
        for d in [src, *dsts]:
            if d not in all_services:
                raise TopologyError(f"calls: {d!r} is not a service of any host")
    for host, source, _listen, dest in tcp_links:
        h = next((x for x in hosts if x.name == host), None)
        if h is None:
            raise TopologyError(f"tcp link on unknown host {host!r}")
        if source not in {s.name for s in h.services}:
            raise TopologyError(f"tcp link source {source!r} is not a local service of {host}")
        if dest not in all_services:
            raise TopologyError(f"tcp link destination {dest!r} is not a service of any host")


def _build_host(
    state_dir: str,
    h: HostSpec,
    ca: Any,
    ca_pem: bytes,
    trust_domain: str,
    version: int,
    services: dict[str, ServiceInfo],
    inbound_of: dict[str, str],
    tcp_links: list[dict[str, str]],
    calls: dict[str, list[str]] | None,
    ports: tuple[int, int, int],
) -> HostInfo:
    out_base, in_port, admin_port = ports
    hdir = os.path.join(state_dir, h.name)
    cdir = os.path.join(hdir, "certs")
    os.makedirs(cdir, exist_ok=True)
    bundle = os.path.join(cdir, "ca.pem")
    with open(bundle, "wb") as f:
        f.write(ca_pem)
    inbound, admin = _addr(h.address, in_port), _addr(h.address, admin_port)

    # Addresses this host's proxy and apps already use; outbound ports skip them.
    taken = {inbound, admin, *(t["listen"] for t in tcp_links)}
    taken.update(_addr(h.address, p) for ls in h.services for p in ls.instances)
    outbound: dict[str, str] = {}
    port = out_base
    for ls in h.services:
        if not ls.outbound:
            continue
        while _addr(h.address, port) in taken:
            port += 1
        outbound[ls.name] = _addr(h.address, port)
        taken.add(outbound[ls.name])
        port += 1

    certs: dict[str, tuple[str, str]] = {}
    local_json = []
    for ls in h.services:
        certs[ls.name] = _issue_service_cert(ca, ls.name, os.path.join(cdir, ls.name))
        entry: dict[str, Any] = {
            "name": ls.name,
            "protocol": ls.protocol,
            "instances": [_addr(h.address, p) for p in ls.instances],
            "cert": os.path.relpath(certs[ls.name][0], hdir),
            "key": os.path.relpath(certs[ls.name][1], hdir),
        }
        if ls.name in outbound:
            entry["outbound"] = outbound[ls.name]
        local_json.append(entry)

    # Which remote services this host's snapshot lists.
    local_names = [ls.name for ls in h.services]
    if calls is None:
        wanted = set(services)
    else:
        wanted = {d for s in local_names for d in calls.get(s, [])}
    wanted.update(t["destination"] for t in tcp_links)
    services_json = []
    for name in sorted(wanted):
        svc = services[name]
        eps = [{"address": inbound_of[i.host], "host": i.host} for i in svc.instances]
        services_json.append({"name": name, "protocol": svc.protocol, "endpoints": eps})

    snap = {
        "version": version,
        "host": h.name,
        "trust_domain": trust_domain,
        "trust_bundle": "certs/ca.pem",
        "inbound": inbound,
        "admin": admin,
        "local_services": local_json,
        "services": services_json,
        "tcp_links": tcp_links,
    }
    snap_path = os.path.join(hdir, "snapshot.json")
    with open(snap_path, "w") as f:
        json.dump(snap, f, indent=2)
        f.write("\n")
    load_snapshot(snap_path)  # raises SnapshotError naming the field if we wrote nonsense
    return HostInfo(
        name=h.name,
        address=h.address,
        inbound=inbound,
        admin=admin,
        outbound=outbound,
        local_services=local_names,
        instances={ls.name: [_addr(h.address, p) for p in ls.instances] for ls in h.services},
        tcp_links=tcp_links,
        snapshot=snap_path,
        dir=hdir,
        certs=certs,
        trust_bundle=bundle,
    )


# --- under a control plane ------------------------------------------------------------------------------


def mesh_config(
    hosts: Sequence[HostSpec],
    *,
    calls: dict[str, list[str]] | None = None,
    health: dict[str, dict[str, Any]] | None = None,
    inbound_port: int = DEFAULT_PORTS[1],
    policy: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The mesh.yaml document for these hosts: one entry per service, one per host.

    Under a control plane a service listens on one port on every host that runs
    it (`services[].port`), so each LocalSpec has at most one instance, given
    as a port, the same one on every host. Every local service gets an outbound
    listener (4140, 4141, ... on the host's address, as the control plane lays
    them out). calls: as for build_topology (None: everyone may call everyone).
    health: service -> its `health:` block (default: a TCP connect every 2 s).
    policy: service -> its traffic policy fields (subsets:, routes:, ...), added to its entry.
    """
    _validate(hosts, (), calls)
    order: list[str] = []
    port: dict[str, int | None] = {}
    protocol: dict[str, str] = {}
    for h in hosts:
        for ls in h.services:
            if len(ls.instances) > 1 or any(not isinstance(p, int) for p in ls.instances):
                raise TopologyError(f"host {h.name}: under a control plane {ls.name!r} runs at most one "
                                    f"instance per host, given as a port (got {list(ls.instances)})")
            p = ls.instances[0] if ls.instances else None
            if ls.name not in port:
                order.append(ls.name)
                port[ls.name], protocol[ls.name] = p, ls.protocol  # type: ignore[assignment]
            elif p is not None and port[ls.name] not in (None, p):
                raise TopologyError(f"service {ls.name!r} listens on port {port[ls.name]} on one host and on "
                                    f"{p} on {h.name}: under a control plane a service has one port")
            elif protocol[ls.name] != ls.protocol:
                raise TopologyError(f"service {ls.name!r} is {protocol[ls.name]} on one host and {ls.protocol} "
                                    f"on {h.name}")
            elif p is not None:
                port[ls.name] = p
    services: list[dict[str, Any]] = []
    for name in order:
        svc: dict[str, Any] = {"name": name}
        if protocol[name] != "http":
            svc["protocol"] = protocol[name]
        if port[name] is not None:
            svc["port"] = port[name]
        if calls is not None:
            svc["calls"] = list(calls.get(name, []))
        if health and name in health:
            svc["health"] = dict(health[name])
        if policy and name in policy:
            svc.update(policy[name])
        services.append(svc)
    host_docs: list[dict[str, Any]] = []
    for h in hosts:
        doc: dict[str, Any] = {"name": h.name, "address": _addr(h.address, h.inbound_port or inbound_port)}
        if h.admin_port is not None:
            doc["admin"] = _addr(h.address, h.admin_port)
        doc["services"] = [{"name": ls.name, "labels": dict(ls.labels)} if ls.labels else ls.name
                           for ls in h.services]
        host_docs.append(doc)
    return {"services": services, "hosts": host_docs}


def mesh_yaml_text(doc: dict[str, Any], header: str = "") -> str:
    """mesh.yaml as a person would write it: fields in a readable order, short lists inline."""
    import yaml

    lines = [f"# {x}" if x else "#" for x in header.splitlines()]
    body = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
    return ("\n".join(lines) + "\n" if lines else "") + body


def build_control_topology(
    state_dir: str | os.PathLike[str],
    hosts: Sequence[HostSpec],
    *,
    control_url: str,
    calls: dict[str, list[str]] | None = None,
    health: dict[str, dict[str, Any]] | None = None,
    trust_domain: str = "glassmesh.local",
    header: str = "",
    policy: dict[str, dict[str, Any]] | None = None,
) -> Topology:
    """Files for a mesh run by a control plane: mesh.yaml, its CA, each host's data dir, topology.json.

    The one CA is the control plane's own (control/ca, which `glassmesh
    control --data control` loads instead of making another). Each host's
    data dir (state_dir/HOST, given to `glassmesh proxy --data`) starts
    empty: its proxy joins with a token and writes its host identity, its
    services' certificates (certs/SERVICE.pem, .key, certs/ca.pem: the paths
    topology.json names) and its last-known-good snapshot there itself; no
    key is made for it ahead. Addresses (outbound, admin) are computed by the
    control plane's own layout code from the mesh.yaml, so topology.json
    says where the proxies will listen. Nothing is applied or started here.
    """
    from glassmesh.ca import init_ca
    from glassmesh.control.config import parse_config
    from glassmesh.control.layout import host_layout

    state_dir = os.path.abspath(os.fspath(state_dir))
    doc = mesh_config(hosts, calls=calls, health=health, policy=policy)
    mesh_path = os.path.join(state_dir, "mesh.yaml")
    text = mesh_yaml_text(doc, header)
    cfg = parse_config(text, mesh_path)  # ConfigError naming the line if we wrote nonsense
    _clear_previous(state_dir, [h.name for h in hosts])
    with open(mesh_path, "w") as f:
        f.write(text)

    control_dir = os.path.join(state_dir, "control")
    private_dir(control_dir)
    ca_dir = os.path.join(control_dir, "ca")
    ca = init_ca(ca_dir, trust_domain)
    services: dict[str, ServiceInfo] = {}
    infos: dict[str, HostInfo] = {}
    for h, hc in zip(hosts, cfg.hosts, strict=True):
        lay = host_layout(cfg, hc)
        hdir = os.path.join(state_dir, h.name)
        private_dir(hdir)
        cdir = os.path.join(hdir, "certs")
        bundle = os.path.join(cdir, "ca.pem")
        certs = {name: (os.path.join(cdir, name + ".pem"), os.path.join(cdir, name + ".key"))
                 for name in lay.local_services}
        instances: dict[str, list[str]] = {}
        for ls in h.services:
            instances[ls.name] = [_addr(h.address, p) for p in ls.instances]
            svc = services.setdefault(ls.name, ServiceInfo(ls.name, ls.protocol, []))
            svc.instances.extend(Instance(h.name, a) for a in instances[ls.name])
        infos[h.name] = HostInfo(
            name=h.name, address=h.address, inbound=lay.inbound, admin=lay.admin, outbound=dict(lay.outbound),
            local_services=list(lay.local_services), instances=instances, tcp_links=[],
            snapshot=os.path.join(hdir, "snapshot.json"), dir=hdir, certs=certs, trust_bundle=bundle,
        )
    topo = Topology(
        state_dir=state_dir, trust_domain=trust_domain, ca_dir=ca_dir, ca_cert=os.path.join(ca_dir, "ca.pem"),
        path=os.path.join(state_dir, "topology.json"), hosts=infos, services=services, ca=ca,
        control=control_url, control_dir=control_dir, mesh_yaml=mesh_path,
    )
    with open(topo.path, "w") as f:
        json.dump(topo.to_json(), f, indent=2)
        f.write("\n")
    return topo
