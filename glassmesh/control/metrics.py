"""The control plane's /metrics: what `glassmesh status` shows, for Prometheus and alerts.

Built at scrape time from the same `ops.status` document, so the numbers a
person reads and the ones an alert fires on cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry


class _Status:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def collect(self) -> Iterator[GaugeMetricFamily]:
        d = self.doc
        yield _g("glassmesh_control_config_version", "Version of the mesh config in force", d["config_version"])
        yield _g("glassmesh_control_store_revision", "Store revision this replica answers at", d["revision"])
        yield _g("glassmesh_control_replicas", "Control-plane replicas seen alive", len(d["replicas"]))
        yield _g("glassmesh_control_compile_failing", "1 while the last compile failed", 1 if d["compile_error"] else 0)
        held = GaugeMetricFamily("glassmesh_control_held_changes",
                                 "Changes the blast-radius guard holds back, by service", labels=["service"])
        for h in d["held"]:
            held.add_metric([h.get("service", "")], 1)
        yield held
        yield _g("glassmesh_control_held_changes_total", "Changes held back, all services", len(d["held"]))
        yield _g("glassmesh_control_drained_services", "Services drained on purpose", len(d["drained"]))
        yield _g("glassmesh_control_unhealthy_instances", "Instances reported unhealthy", len(d["unhealthy"]))
        versions = GaugeMetricFamily("glassmesh_control_host_snapshot_version",
                                     "Snapshot version per host: the one its proxy runs and the latest compiled",
                                     labels=["host", "kind"])
        behind = 0
        for h in d["hosts"]:
            versions.add_metric([h["name"], "running"], h["running"])
            versions.add_metric([h["name"], "latest"], h["latest"])
            behind += 0 if h["in_sync"] else 1
        yield versions
        yield _g("glassmesh_control_hosts", "Hosts in the mesh config", len(d["hosts"]))
        yield _g("glassmesh_control_hosts_behind", "Hosts not yet running their latest snapshot", behind)
        seconds = d["outage_budget"]["seconds"]
        if seconds is not None:
            yield _g("glassmesh_control_outage_budget_seconds",
                     "How long the mesh can run with the control plane down (earliest certificate expiry)", seconds)


def _g(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def render(status_doc: dict[str, Any]) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Status(status_doc))
    return generate_latest(reg)
