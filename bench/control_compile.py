"""Benchmark: compile snapshots for 1,000 services x 10 instances over 200 hosts.

Prints the time to validate the config, to compile every host's snapshot
(and per host), the bytes per encoded snapshot, and the cost of the common
case: one endpoint changes and only the hosts that call its service move
(and the bytes of the delta each of them is sent instead of its snapshot).
Two shapes: every service may call every service (the default, worst case)
and each service calls 5 others (`calls:`), which is what keeps a proxy's
snapshot proportional to what it talks to.

    .venv/bin/python bench/control_compile.py [--services 1000] [--instances 10] [--hosts 200]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import msgspec
import yaml

from glassmesh.api.wire import make_delta
from glassmesh.control.compile import compile_snapshots
from glassmesh.control.config import parse_config
from glassmesh.control.store import InstanceRecord
from glassmesh.model.snapshot import DigestCache, snapshot_digest


def build(n_services: int, n_inst: int, n_hosts: int, calls: int | None, seed: int = 1) -> tuple[str, list]:  # type: ignore[type-arg]
    rnd = random.Random(seed)
    hosts = [{"name": f"h{i}", "address": f"127.1.{i // 250}.{i % 250 + 1}:4143", "services": []}
             for i in range(n_hosts)]
    services, instances = [], []
    for s in range(n_services):
        name = f"svc{s}"
        svc: dict = {"name": name, "port": 10000 + s}  # type: ignore[type-arg]
        if calls is not None:
            svc["calls"] = [f"svc{x}" for x in rnd.sample(range(n_services), calls)]
        services.append(svc)
        for h in rnd.sample(hosts, n_inst):
            h["services"].append(name)
            ip = h["address"].rsplit(":", 1)[0]
            instances.append(InstanceRecord(name, h["name"], f"{ip}:{10000 + s}", True))
    return yaml.safe_dump({"services": services, "hosts": hosts}), instances


def run(n_services: int, n_inst: int, n_hosts: int, calls: int | None) -> None:
    text, instances = build(n_services, n_inst, n_hosts, calls)
    t0 = time.perf_counter()
    cfg = parse_config(text)
    t_parse = time.perf_counter() - t0
    t0 = time.perf_counter()
    snaps = compile_snapshots(cfg, instances, trust_domain="glassmesh.local", versions={}, version=1)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    sizes = [len(msgspec.json.encode(s)) for s in snaps.values()]  # as served (compact JSON)
    t_encode = time.perf_counter() - t0
    # One instance of svc0 goes unhealthy: recompile, count the hosts whose version moved.
    changed = [*instances[1:], InstanceRecord(instances[0].service, instances[0].host, instances[0].address, False)]
    t0 = time.perf_counter()
    again = compile_snapshots(cfg, changed, trust_domain="glassmesh.local", versions=snaps, version=2)
    t_inc = time.perf_counter() - t0
    moved_hosts = [h for h in again if again[h].version != snaps[h].version]
    moved = len(moved_hosts)
    cache = DigestCache()
    t0 = time.perf_counter()
    deltas = [len(msgspec.json.encode(make_delta(snaps[h], again[h], snapshot_digest(snaps[h], cache),
                                                 snapshot_digest(again[h], cache)))) for h in moved_hosts]
    t_delta = time.perf_counter() - t0
    shape = "all-to-all" if calls is None else f"calls {calls} each"
    print(f"{n_services} services x {n_inst} instances over {n_hosts} hosts, {shape}:")
    print(f"  validate config        {t_parse * 1000:8.1f} ms ({len(text) / 1e6:.1f} MB of YAML)")
    print(f"  compile all hosts      {t_compile * 1000:8.1f} ms = {t_compile / n_hosts * 1000:.2f} ms per host")
    print(f"  encode all snapshots   {t_encode * 1000:8.1f} ms = {t_encode / n_hosts * 1000:.2f} ms per host")
    print(f"  bytes per snapshot     mean {statistics.mean(sizes) / 1024:.1f} KiB, max {max(sizes) / 1024:.1f} KiB")
    print(f"  one endpoint changes   {t_inc * 1000:8.1f} ms to recompile; {moved} of {n_hosts} hosts get a new version")
    if deltas:
        print(f"  ... as deltas          {t_delta * 1000:8.1f} ms to digest and encode them; "
              f"{statistics.mean(deltas):.0f} bytes each (against {statistics.mean(sizes) / 1024:.1f} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--hosts", type=int, default=200)
    a = ap.parse_args()
    run(a.services, a.instances, a.hosts, None)
    run(a.services, a.instances, a.hosts, 5)


if __name__ == "__main__":
    main()
