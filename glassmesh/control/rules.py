"""Meaning checks on a schema-valid mesh config: names resolve, addresses do not clash.

The schema says each field has the right shape; these rules say the whole
makes sense, so that compile never produces a snapshot a proxy would refuse.
Every check returns the field path, which the caller turns into a line.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from glassmesh.control.layout import Index, host_layout, index, join, local_ip
from glassmesh.control.schema import LABEL_KEY_RE, LABEL_VALUE_RE

if TYPE_CHECKING:
    from glassmesh.control.schema import MeshConfig
    from glassmesh.model.snapshot import Route

Found = list[tuple[str, str]]
# Labels say which subset an instance belongs to (`version: v2`); Kubernetes' syntax, so they read alike.
_LABEL_KEY = re.compile(LABEL_KEY_RE)
_LABEL_VALUE = re.compile(LABEL_VALUE_RE)


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


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP method or header name (RFC 9110 5.6.2)


def instance_labels(cfg: MeshConfig) -> dict[tuple[str, str], dict[str, str]]:
    """(service, host) -> the labels of that service's instances on that host, from mesh.yaml.

    From the host's `services:` entry and from static instances on the host.
    Labels are per host, not per instance: callers reach every instance of a
    service on a host through that host's one proxy, so they can only choose
    among hosts (rules below refuse instances on one host that disagree).
    """
    out: dict[tuple[str, str], dict[str, str]] = {}
    for h in cfg.hosts:
        for name, labels in h.service_labels.items():
            out[(name, h.name)] = dict(labels)
    for s in cfg.services:
        for i in s.instances:
            if i.labels:
                out.setdefault((s.name, i.host), {}).update(i.labels)
    return out


def _labels_agree(cfg: MeshConfig, out: Found) -> None:
    """Instances of one service on one host must not give different labels (they share the host's proxy)."""
    given: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}
    for i, h in enumerate(cfg.hosts):
        for name, labels in h.service_labels.items():
            j = h.services.index(name) if name in h.services else 0
            given[(name, h.name)] = (f"hosts[{i}].services[{j}].labels", dict(labels))
    for i, s in enumerate(cfg.services):
        for j, inst in enumerate(s.instances):
            first = given.get((s.name, inst.host))
            if first is None:
                given[(s.name, inst.host)] = (f"services[{i}].instances[{j}].labels", dict(inst.labels))
            elif dict(inst.labels) != first[1] and inst.labels:
                out.append((f"services[{i}].instances[{j}].labels",
                            f"labels {dict(inst.labels)} differ from {first[1]} at {first[0]}: the instances of "
                            f"{s.name!r} on {inst.host} share its proxy, so callers cannot tell them apart"))


def _policy(cfg: MeshConfig, out: Found) -> None:
    """Each service's traffic policy: references resolve, shares add up, retries are safe."""
    labels = instance_labels(cfg)
    declared: dict[str, list[dict[str, str]]] = {}  # service -> the label sets its instances may carry
    runs: dict[str, set[str]] = {}
    for h in cfg.hosts:
        for name in h.services:
            runs.setdefault(name, set()).add(h.name)
    for s in cfg.services:
        for i in s.instances:
            runs.setdefault(s.name, set()).add(i.host)
    for (name, host), ls in labels.items():
        if host in runs.get(name, ()):
            declared.setdefault(name, []).append(ls)
    for i, s in enumerate(cfg.services):
        p = f"services[{i}]"
        if s.protocol == "tcp" and s.policy() is not None:
            out.append((p, "subsets, routes, balance, retry_budget, outlier and limits apply to http services "
                           "only: a tcp link carries bytes, not requests"))
            continue
        subsets: set[str] = set()
        for j, sub in enumerate(s.subsets):
            sp = f"{p}.subsets[{j}]"
            if sub.name in subsets:
                out.append((f"{sp}.name", f"duplicate subset {sub.name!r}"))
            subsets.add(sub.name)
            _label_syntax(sub.labels, f"{sp}.labels", out)
            want = sub.labels.items()
            if sub.labels and not any(want <= ls.items() for ls in declared.get(s.name, [])):
                # An error, not a warning: labels come only from this file, so no instance can ever join
                # this subset under it (a typo such as `verison: v2`), and a canary's share would
                # silently go to the other subsets instead.
                shown = ", ".join(f"{k}={v}" for k, v in sub.labels.items()) or "(no labels)"
                out.append((f"{sp}.labels", f"subset {sub.name!r} selects no instance of {s.name!r}: no host's "
                                            f"services: entry or static instance of it has labels {shown}"))
        names: set[str] = set()
        for j, r in enumerate(s.routes):
            _route(r, f"{p}.routes[{j}]", subsets, names, out)
        o = s.outlier
        if o is not None and o.base_ejection_ms > o.max_ejection_ms:
            out.append((f"{p}.outlier.base_ejection_ms", f"{o.base_ejection_ms} is more than max_ejection_ms "
                                                         f"({o.max_ejection_ms})"))


def _label_syntax(labels: dict[str, str], p: str, out: Found) -> None:
    for k, v in labels.items():
        if _LABEL_KEY.match(k) is None:
            out.append((f"{p}.{k}", f"{k!r} is not a label name (letters, digits, - _ . /; at most 63)"))
        if _LABEL_VALUE.match(v) is None:
            out.append((f"{p}.{k}", f"{v!r} is not a label value (letters, digits, - _ .; at most 63)"))


def _route(r: Route, p: str, subsets: set[str], names: set[str], out: Found) -> None:
    if r.name in names:
        out.append((f"{p}.name", f"duplicate route {r.name!r} (route names are unique per service)"))
    names.add(r.name)
    m = r.match
    for field, path in (("path_prefix", m.path_prefix), ("path_exact", m.path_exact)):
        if path is not None and not path.startswith("/"):
            out.append((f"{p}.match.{field}", f"a path starts with '/', got {path!r}"))
        elif path is not None and ("?" in path or "#" in path):
            out.append((f"{p}.match.{field}", f"routes match the path without its query string: {path!r} "
                                              "has a '?' or '#'"))
    if m.path_regex is not None:
        try:
            re.compile(m.path_regex)
        except re.error as e:
            out.append((f"{p}.match.path_regex", f"not a valid regular expression: {e}"))
    for k, meth in enumerate(m.methods):
        if _TOKEN.match(meth) is None:
            out.append((f"{p}.match.methods[{k}]", f"{meth!r} is not an HTTP method"))
    for name in m.headers:
        if _TOKEN.match(name) is None:
            out.append((f"{p}.match.headers.{name}", f"{name!r} is not an HTTP header name"))
    seen: set[str] = set()
    for k, b in enumerate(r.split):
        if b.subset not in subsets:
            out.append((f"{p}.split[{k}].subset", f"{b.subset!r} is not one of this service's subsets "
                                                  f"({', '.join(sorted(subsets)) or 'it has none'})"))
        elif b.subset in seen:
            out.append((f"{p}.split[{k}].subset", f"{b.subset!r} is listed twice"))
        seen.add(b.subset)
    if r.split and sum(b.weight for b in r.split) == 0:
        out.append((f"{p}.split", "the weights add up to 0: the route would send its requests nowhere"))
    if r.retry is not None:
        for k, st in enumerate(r.retry.on_status):
            if not 500 <= st <= 599:
                out.append((f"{p}.retry.on_status[{k}]", f"{st} is not a 5xx status: only server errors are "
                                                         "retried (a 4xx would fail again the same way)"))
    f = r.fault
    if f is not None:
        if f.abort_percent > 0 and f.abort_status is None:
            out.append((f"{p}.fault.abort_status", "abort_percent is set: give the status to answer with"))
        if f.delay_percent > 0 and f.delay_ms == 0:
            out.append((f"{p}.fault.delay_ms", "delay_percent is set: give the delay"))
    if r.mirror is not None and r.mirror.subset not in subsets:
        out.append((f"{p}.mirror.subset", f"{r.mirror.subset!r} is not one of this service's subsets"))


def check_meaning(cfg: MeshConfig) -> Found:
    """Every meaning problem as (field path, message); empty when the config makes sense."""
    out: Found = []
    _services(cfg, {h.name for h in cfg.hosts}, out)
    idx = index(cfg)
    _hosts(cfg, idx, out)
    _links(cfg, idx, out)
    _labels_agree(cfg, out)
    _policy(cfg, out)
    return out
