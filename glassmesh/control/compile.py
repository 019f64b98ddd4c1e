"""Compile the mesh config and live instances into one snapshot per host. Pure: no I/O, no clock.

A host's snapshot holds only what its local services need: their own
instances and listeners, and the services they may call (every service, or a
service's `calls:` list), so a proxy's memory grows with what it talks to,
not with the mesh. Being pure makes it testable, benchmarkable and identical
on every control-plane replica that compiles from the same store.

Versions only grow, and a host whose content did not change keeps its
version (content is compared, never time), so an unrelated change does not
make 200 proxies reload.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

import msgspec

from glassmesh.control.config import HostConfig, MeshConfig, ServiceConfig
from glassmesh.control.discovery import SOURCE_DNS, is_external
from glassmesh.control.layout import effective_calls, host_layout, index, join, local_ip
from glassmesh.control.rules import instance_labels
from glassmesh.control.store import HostRecord, InstanceRecord
from glassmesh.model.snapshot import Endpoint, LocalService, Policy, Service, Snapshot, TcpLink

InstanceKey = tuple[str, str]  # (host, app address): one instance of a service


def effective_hosts(cfg: MeshConfig, hosts: Iterable[HostRecord] = ()) -> list[HostConfig]:
    """Config hosts, plus hosts known only from the store (joined) that report an inbound address."""
    out = list(cfg.hosts)
    known = {h.name for h in out}
    svc = {s.name for s in cfg.services}
    for h in hosts:
        if h.name not in known and h.inbound:
            out.append(HostConfig(name=h.name, address=h.inbound, admin=h.admin or None,
                                  services=[s for s in h.services if s in svc]))
            known.add(h.name)
    return out


def _runs(cfg: MeshConfig, hosts: list[HostConfig]) -> dict[str, set[str]]:
    """host -> services it may serve; a proxy's report of anything else is ignored."""
    runs = {h.name: set(h.services) for h in hosts}
    for s in cfg.services:
        for i in s.instances:
            runs.setdefault(i.host, set()).add(s.name)
    return runs


def healthy_instances(cfg: MeshConfig, instances: Iterable[InstanceRecord],
                      hosts: Iterable[HostRecord] = ()) -> dict[str, list[InstanceKey]]:
    """service -> its healthy instances, sorted: proxy reports, plus static ones not reported unhealthy."""
    runs = _runs(cfg, effective_hosts(cfg, hosts))
    healthy: dict[str, set[InstanceKey]] = {s.name: set() for s in cfg.services}
    sick: set[tuple[str, str, str]] = set()
    dns = {s.name for s in cfg.services if s.dns is not None}
    for r in instances:
        if is_external(r.host):  # DNS discovery: no mesh host runs these, the service's `dns:` vouches
            if r.source == SOURCE_DNS and r.service in dns and r.healthy:
                healthy[r.service].add((r.host, r.address))
            continue
        if r.service not in healthy or r.service not in runs.get(r.host, ()):
            continue
        if r.healthy:
            healthy[r.service].add((r.host, r.address))
        else:
            sick.add((r.service, r.host, r.address))
    for s in cfg.services:
        healthy[s.name].update((i.host, i.address) for i in s.instances if (s.name, i.host, i.address) not in sick)
    return {name: sorted(keys) for name, keys in healthy.items()}


def _local_instances(svcs: dict[str, ServiceConfig], host: HostConfig, names: Iterable[str],
                     instances: list[InstanceRecord]) -> dict[str, list[str]]:
    """Addresses the inbound side delivers to: healthy ones, or every known one when none is healthy."""
    ip = local_ip(host.address)
    reported: dict[str, list[InstanceRecord]] = {}  # by service: a host runs ~50 services in a big mesh
    for r in instances:
        if r.host == host.name:
            reported.setdefault(r.service, []).append(r)
    out: dict[str, list[str]] = {}
    for name in names:
        svc = svcs.get(name)
        known: dict[str, bool] = {}
        if svc is not None and svc.port is not None and name in host.services:
            known[join(ip, svc.port)] = True
        for i in svc.instances if svc is not None else ():
            if i.host == host.name:
                known[i.address] = True
        for r in reported.get(name, ()):
            known[r.address] = r.healthy
        good = sorted(a for a, ok in known.items() if ok)
        out[name] = good or sorted(known)
    return out


def _callers(cfg: MeshConfig) -> dict[str, list[str] | None]:
    """service -> the services that may call it (their `calls:`, or a tcp link to it); None: every one.

    Enforced at the destination's inbound proxy, so that a service whose own
    proxy does not hold it back (a compromised host, a hand-made client with
    a stolen certificate) still cannot reach what it may not call. One list
    object per distinct set: in an all-to-all mesh every entry is None.
    """
    names = [s.name for s in cfg.services]
    everyone: set[str] = set()
    specific: dict[str, set[str]] = {}
    for svc in cfg.services:
        c = effective_calls(svc)
        if c is None:
            everyone.add(svc.name)
        else:
            for x in c:
                specific.setdefault(x, set()).add(svc.name)
    for t in cfg.tcp_links:
        specific.setdefault(t.destination, set()).add(t.source)
    shared: dict[frozenset[str], list[str]] = {}
    out: dict[str, list[str] | None] = {}
    for x in names:
        allowed = frozenset(everyone | specific.get(x, set()))
        if len(allowed) == len(names):
            out[x] = None
        else:
            out[x] = shared.setdefault(allowed, sorted(allowed))
    return out


def _service_structs(cfg: MeshConfig, endpoints: Mapping[str, Iterable[InstanceKey]],
                     inbound: dict[str, str], versions: Mapping[str, Snapshot],
                     drained: frozenset[str] = frozenset()) -> dict[str, Service]:
    """One immutable Service per service, shared by every host's snapshot (compiled once, not per host).

    An unchanged service reuses the previous compile's object, so comparing a
    host's old and new snapshot mostly compares identities, not 10,000 endpoints.
    """
    prev: dict[str, Service] = {}
    seen: set[int] = set()  # hosts share their services list (compile_snapshots): look at each list once
    for snap in versions.values():
        if id(snap.services) in seen:
            continue
        seen.add(id(snap.services))
        for svc in snap.services:
            prev.setdefault(svc.name, svc)
    out: dict[str, Service] = {}
    labels = instance_labels(cfg)
    for s in cfg.services:
        # A mesh instance is reached through its host's proxy (inbound port); an external (DNS)
        # one has no proxy in front, so its endpoint is its own address.
        eps = [Endpoint(address=a, host=h, mesh=False) if is_external(h)
               else Endpoint(address=inbound[h], host=h, labels=labels.get((s.name, h), {}))
               for h, a in sorted(endpoints.get(s.name, ())) if is_external(h) or h in inbound]
        new = Service(name=s.name, protocol=s.protocol, endpoints=eps, drained=s.name in drained,
                      policy=_policy(s))
        old = prev.get(s.name)
        out[s.name] = old if old is not None and old == new else new
    return out


def compile_snapshots(
    cfg: MeshConfig,
    instances: Iterable[InstanceRecord],
    hosts: Iterable[HostRecord] = (),
    *,
    trust_domain: str,
    versions: Mapping[str, Snapshot],
    endpoints: Mapping[str, Iterable[InstanceKey]] | None = None,
    version: int = 0,
    trust_bundle: str = "certs/ca.pem",
    drained: Iterable[str] = (),
) -> dict[str, Snapshot]:
    """host -> its snapshot.

    versions: each host's previous snapshot; an unchanged one is returned as is.
    endpoints: service -> instances to push (what the guard let through); default: every healthy one.
    version: the least version a changed snapshot gets (the store revision, so replicas agree);
    it is always above the host's previous one.
    """
    records = list(instances)
    hosts = list(hosts)
    if endpoints is None:
        endpoints = healthy_instances(cfg, records, hosts)
    all_hosts = effective_hosts(cfg, hosts)
    inbound = {h.name: h.address for h in all_hosts}
    services = _service_structs(cfg, endpoints, inbound, versions, frozenset(drained))
    by_host: dict[str, list[InstanceRecord]] = {}
    for r in records:
        by_host.setdefault(r.host, []).append(r)
    idx = index(cfg)
    svcs = idx.services
    callers = _callers(cfg)
    out: dict[str, Snapshot] = {}
    # Hosts that may call the same services share one list object: in an all-to-all mesh that is
    # every host, so 200 hosts do not each build, sort and compare a list of 1,000 services.
    lists: dict[frozenset[str] | None, list[Service]] = {}
    withheld_lists: dict[frozenset[str] | None, list[str]] = {}
    for h in all_hosts:
        lay = host_layout(cfg, h, idx)
        local = _local_instances(svcs, h, lay.local_services, by_host.get(h.name, []))
        links = [TcpLink(source=t.source, listen=t.listen, destination=t.destination)
                 for t in cfg.tcp_links if t.host == h.name]
        calls = {n: effective_calls(svcs.get(n)) for n in lay.local_services}
        key: frozenset[str] | None = None  # None: every service
        if all(svcs.get(n) is not None and c is not None for n, c in calls.items()):
            wanted: set[str] = {t.destination for t in links}
            for c in calls.values():
                wanted.update(c or ())
            key = frozenset(wanted)
        listed = lists.get(key)
        if listed is None:
            listed = lists[key] = [services[n] for n in sorted(services if key is None else key)]
        # The rest of the mesh by name, so that a refused call says so instead of "unknown".
        withheld = withheld_lists.get(key)
        if withheld is None:
            withheld = withheld_lists[key] = [] if key is None else sorted(n for n in services if n not in key)
        snap = Snapshot(
            version=0, host=h.name, trust_domain=trust_domain, trust_bundle=trust_bundle,
            inbound=lay.inbound, admin=lay.admin,
            local_services=[
                LocalService(name=n, protocol=_protocol(svcs, n), instances=local[n], outbound=lay.outbound.get(n),
                             calls=calls[n], callers=callers.get(n), cert=f"certs/{n}.pem", key=f"certs/{n}.key",
                             **_health(svcs.get(n)))
                for n in lay.local_services
            ],
            services=listed,
            withheld_services=withheld,
            tcp_links=links,
            # A proxy that ignored a policy would spread a 1% canary evenly and never time out, retry or
            # eject as configured: policy is must-understand, so an older proxy refuses the snapshot and
            # keeps its last one (and `glassmesh status` says which feature it lacks).
            requires=["policy"] if any(s.policy is not None for s in listed) else [],
        )
        prev = versions.get(h.name)
        if prev is not None and msgspec.structs.replace(prev, version=0) == snap:
            out[h.name] = prev
        else:
            out[h.name] = msgspec.structs.replace(snap, version=max(version, (prev.version if prev else 0) + 1))
    return out


def _policy(svc: ServiceConfig) -> Policy | None:
    """The service's traffic policy as proxies take it: header names lowercase, methods upper case."""
    pol = svc.policy()
    if pol is None or not pol.routes:
        return pol
    routes = []
    for r in pol.routes:
        m = r.match
        if m.methods or m.headers:
            m = msgspec.structs.replace(m, methods=[x.upper() for x in m.methods],
                                        headers={k.lower(): v for k, v in m.headers.items()})
            r = msgspec.structs.replace(r, match=m)
        routes.append(r)
    return msgspec.structs.replace(pol, routes=routes)


def _health(svc: ServiceConfig | None) -> dict[str, Any]:
    """How the instance's own proxy checks it, from the service's `health:` (default: TCP connect)."""
    h = svc.health if svc is not None else None
    if h is None:
        return {}
    return {"health_http": h.http, "health_interval_ms": h.interval_ms, "health_timeout_ms": h.timeout_ms}


_Protocol = Literal["http", "tcp"]


def _protocol(svcs: dict[str, ServiceConfig], name: str) -> _Protocol:
    svc = svcs.get(name)
    return cast(_Protocol, svc.protocol if svc else "http")  # a plain name: Literal[...] costs a lookup per call
