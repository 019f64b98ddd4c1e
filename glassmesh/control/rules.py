"""Meaning checks on a schema-valid mesh config: names resolve, addresses do not clash.

The schema says each field has the right shape; these rules say the whole
makes sense, so that compile never produces a snapshot a proxy would refuse.
Every check returns the field path, which the caller turns into a line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from glassmesh.control.layout import Index, host_layout, index, join, local_ip

if TYPE_CHECKING:
    from glassmesh.control.config import MeshConfig

Found = list[tuple[str, str]]


def _services(cfg: MeshConfig, hosts: set[str], out: Found) -> None:
    names: set[str] = set()
    all_names = {s.name for s in cfg.services}
    for i, s in enumerate(cfg.services):
        p = f"services[{i}]"
        if s.name in names:
            out.append((f"{p}.name", f"duplicate service {s.name!r}"))
        names.add(s.name)
        if s.health is not None:
            h = s.health
            if h.tcp == (h.http is not None):
                out.append((f"{p}.health", "give exactly one of `tcp: true` or `http: /path`"))
            if h.http is not None and not h.http.startswith("/"):
                out.append((f"{p}.health.http", f"the health check path must start with '/', got {h.http!r}"))
            if h.timeout_ms > h.interval_ms:
                out.append((f"{p}.health.timeout_ms", "timeout_ms must not exceed interval_ms"))
        for j, inst in enumerate(s.instances):
            if inst.host not in hosts:
                out.append((f"{p}.instances[{j}].host", f"{inst.host!r} is not in hosts"))
        for j, c in enumerate(s.calls or []):
            if c not in all_names:
                out.append((f"{p}.calls[{j}]", f"{c!r} is not a service"))


def _hosts(cfg: MeshConfig, idx: Index, out: Found) -> None:
    names: set[str] = set()
    inbound: dict[str, str] = {}
    svc_names = {s.name for s in cfg.services}
    for i, h in enumerate(cfg.hosts):
        p = f"hosts[{i}]"
        if h.name in names:
            out.append((f"{p}.name", f"duplicate host {h.name!r}"))
        names.add(h.name)
        if h.address in inbound:
            out.append((f"{p}.address", f"{h.address} is already the inbound of {inbound[h.address]}"))
        inbound[h.address] = h.name
        ip = local_ip(h.address)
        apps: dict[str, str] = {}
        for j, s in enumerate(h.services):
            port = svc.port if (svc := idx.services.get(s)) is not None else None
            if port is not None and (addr := join(ip, port)) in apps:
                out.append((f"{p}.services[{j}]", f"{s!r} and {apps[addr]!r} both listen on {addr} (same port)"))
            elif port is not None:
                apps[join(ip, port)] = s
            if s not in svc_names:
                out.append((f"{p}.services[{j}]", f"{s!r} is not a service"))
            elif s in h.services[:j]:
                out.append((f"{p}.services[{j}]", f"{s!r} is listed twice"))
        layout = host_layout(cfg, h, idx)
        for s in h.outbound:
            if s not in layout.local_services:
                out.append((f"{p}.outbound.{s}", f"{s!r} is not a service of this host"))
        used: dict[str, str] = {h.address: "address"}
        pinned = {f"outbound.{k}": v for k, v in layout.outbound.items() if k in h.outbound}
        for what, addr in [("admin", layout.admin), *pinned.items()]:
            if addr in used:
                out.append((f"{p}.{what}", f"{addr} is already used by {used[addr]}"))
            used[addr] = what
        used.update({v: f"outbound.{k}" for k, v in layout.outbound.items() if k not in h.outbound})
        for j, t in enumerate(cfg.tcp_links):
            if t.host == h.name and t.listen in used:
                out.append((f"tcp_links[{j}].listen", f"{t.listen} is already used by {h.name} {used[t.listen]}"))
            elif t.host == h.name:
                used[t.listen] = f"tcp_links[{j}]"


def _links(cfg: MeshConfig, idx: Index, out: Found) -> None:
    for i, t in enumerate(cfg.tcp_links):
        p = f"tcp_links[{i}]"
        host = cfg.host(t.host)
        if host is None:
            out.append((f"{p}.host", f"{t.host!r} is not in hosts"))
        elif t.source not in host_layout(cfg, host, idx).local_services:
            out.append((f"{p}.source", f"{t.source!r} is not a service of {t.host}"))
        dst = idx.services.get(t.destination)
        if dst is None:
            out.append((f"{p}.destination", f"{t.destination!r} is not a service"))
        elif dst.protocol != "tcp":
            out.append((f"{p}.destination", f"{t.destination!r} is an http service, a tcp link needs a tcp one"))


def check_meaning(cfg: MeshConfig) -> Found:
    """Every meaning problem as (field path, message); empty when the config makes sense."""
    out: Found = []
    _services(cfg, {h.name for h in cfg.hosts}, out)
    idx = index(cfg)
    _hosts(cfg, idx, out)
    _links(cfg, idx, out)
    return out
