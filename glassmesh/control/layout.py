"""Where each host's listeners go: derived from the config the same way by validation and compile.

Outbound listeners are what apps are configured with (HTTP_PROXY), so they
must not move when an unrelated service is added: they are derived from the
order of `hosts[].services` (append new ones at the end) or pinned with
`hosts[].outbound`, and never depend on instances or health.

Only the inbound port faces the network. Outbound listeners, the admin port
and the apps (`port:`) are on the host's loopback (`local_ip`): an outbound
listener calls as its service, with its certificate, and an app reached on
the network could be sent a forged `glassmesh-source` past the mTLS check.
A host whose own address is a loopback one (several hosts on one machine,
as in the demo and the tests) uses that address instead, which is just as
private to the machine.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from glassmesh.model.snapshot import split_address

if TYPE_CHECKING:
    from glassmesh.control.schema import HostConfig, MeshConfig, ServiceConfig

OUTBOUND_PORT0 = 4140
ADMIN_PORT = 4191


def join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def local_ip(host_address: str) -> str:
    """The address a host's private listeners and apps use: its loopback (see the module docstring)."""
    ip, _ = split_address(host_address)
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "127.0.0.1"  # a name: loopback
    if addr.is_loopback:
        return ip
    return "::1" if addr.version == 6 else "127.0.0.1"


@dataclass(frozen=True)
class HostLayout:
    name: str
    inbound: str
    admin: str
    local_services: tuple[str, ...]  # listed services, then services with static instances here
    outbound: dict[str, str]  # local service -> its outbound listener (none for one that calls nothing)
    tcp_listens: tuple[str, ...]


@dataclass(frozen=True)
class Index:
    """Lookups by name, built once per config: a 1,000-service mesh must not be scanned per host."""

    services: dict[str, ServiceConfig]
    static: dict[str, list[tuple[str, str]]]  # host -> [(service, address)] of static instances


def index(cfg: MeshConfig) -> Index:
    static: dict[str, list[tuple[str, str]]] = {}
    for s in cfg.services:
        for i in s.instances:
            static.setdefault(i.host, []).append((s.name, i.address))
    return Index({s.name: s for s in cfg.services}, static)


def effective_calls(svc: ServiceConfig | None) -> list[str] | None:
    """What a service may call: its `calls:`; without one, every service (http) or nothing (tcp).

    A tcp service's apps speak their own protocol, not HTTP through an outbound listener; one
    that calls through the mesh lists what it calls (and uses tcp links or HTTP for it).
    """
    if svc is None:
        return None
    if svc.calls is None and svc.protocol == "tcp":
        return []
    return svc.calls


def local_services(cfg: MeshConfig, host: HostConfig, idx: Index | None = None) -> tuple[str, ...]:
    idx = idx or index(cfg)
    names = list(dict.fromkeys(host.services))
    for svc, _ in idx.static.get(host.name, ()):
        if svc not in names:
            names.append(svc)
    return tuple(names)


def host_layout(cfg: MeshConfig, host: HostConfig, idx: Index | None = None) -> HostLayout:
    idx = idx or index(cfg)
    ip = local_ip(host.address)
    admin = host.admin or join(ip, ADMIN_PORT)
    locals_ = local_services(cfg, host, idx)
    listens = tuple(t.listen for t in cfg.tcp_links if t.host == host.name)
    taken = {host.address, admin, *listens, *host.outbound.values()}
    for name in locals_:  # app ports on this host are not ours to listen on
        svc = idx.services.get(name)
        if svc is not None and svc.port is not None:
            taken.add(join(ip, svc.port))
    taken.update(a for _, a in idx.static.get(host.name, ()))
    outbound: dict[str, str] = {}
    port = OUTBOUND_PORT0
    for name in locals_:
        if name in host.outbound:
            outbound[name] = host.outbound[name]
            continue
        while join(ip, port) in taken:
            port += 1
        addr = join(ip, port)
        taken.add(addr)
        port += 1
        # A service that calls nothing gets no listener; its port stays counted, so that the
        # listeners after it do not move (and it gets this one back if it later calls something).
        if effective_calls(idx.services.get(name)) != []:
            outbound[name] = addr
    return HostLayout(host.name, host.address, admin, locals_, outbound, listens)
