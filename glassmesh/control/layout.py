"""Where each host's listeners go: derived from the config the same way by validation and compile.

Outbound listeners are what apps are configured with (HTTP_PROXY), so they
must not move when an unrelated service is added: they are derived from the
order of `hosts[].services` (append new ones at the end) or pinned with
`hosts[].outbound`, and never depend on instances or health.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from glassmesh.model.snapshot import split_address

if TYPE_CHECKING:
    from glassmesh.control.config import HostConfig, MeshConfig

OUTBOUND_PORT0 = 4140
ADMIN_PORT = 4191


def join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True)
class HostLayout:
    name: str
    inbound: str
    admin: str
    local_services: tuple[str, ...]  # listed services, then services with static instances here
    outbound: dict[str, str]  # local service -> its outbound listener
    tcp_listens: tuple[str, ...]


def local_services(cfg: MeshConfig, host: HostConfig) -> tuple[str, ...]:
    names = list(dict.fromkeys(host.services))
    for s in cfg.services:
        if s.name not in names and any(i.host == host.name for i in s.instances):
            names.append(s.name)
    return tuple(names)


def host_layout(cfg: MeshConfig, host: HostConfig) -> HostLayout:
    ip, _ = split_address(host.address)
    admin = host.admin or join(ip, ADMIN_PORT)
    locals_ = local_services(cfg, host)
    listens = tuple(t.listen for t in cfg.tcp_links if t.host == host.name)
    taken = {host.address, admin, *listens, *host.outbound.values()}
    for s in cfg.services:  # app ports on this host are not ours to listen on
        if s.name in locals_ and s.port is not None:
            taken.add(join(ip, s.port))
        taken.update(i.address for i in s.instances if i.host == host.name)
    outbound: dict[str, str] = {}
    port = OUTBOUND_PORT0
    for name in locals_:
        if name in host.outbound:
            outbound[name] = host.outbound[name]
            continue
        while join(ip, port) in taken:
            port += 1
        outbound[name] = join(ip, port)
        taken.add(outbound[name])
        port += 1
    return HostLayout(host.name, host.address, admin, locals_, outbound, listens)
