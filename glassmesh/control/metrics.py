"""The control plane's /metrics: what `glassmesh status` shows, for Prometheus and alerts.

Built at scrape time from the same `ops.status` document, so the numbers a
person reads and the ones an alert fires on cannot disagree.

Held changes are counted twice over: `glassmesh_control_held_changes{service}`
says what is held now (1, or 0 for a service held before and no longer), and
`glassmesh_control_holds_total{service}` counts every change this replica's
compile loop held back since it started, so an alert on
`increase(...[1h]) > 0` sees a hold that an operator released between two
scrapes. It is a per-process counter like any other: sum it over replicas
(each hold is counted by the replica that made it). `HoldCounter` does the
counting by watching the compile loop's writes to the store on their way, so
the loop needs no knowledge of metrics.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from glassmesh.control.store import Store, StoreTap

DEPRECATED_HELD = "glassmesh_control_held_changes_total"  # now glassmesh_control_held_services
HELD_KIND = "held"  # the records the compile loop keeps of held changes (plane.Plane._record)


class HoldCounter(StoreTap):
    """The compile loop's store, counting each change it starts to hold, per service.

    A hold starts when a "held" record is written for a service that had
    none, or whose `since` changes (the loop keeps `since` while the same
    hold goes on, and its cause may be rewritten meanwhile: not a new hold).
    """

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.counts: dict[str, int] = {}

    async def put_record(self, kind: str, key: str, value: dict[str, Any], ttl_s: float | None = None) -> None:
        started = False
        if kind == HELD_KIND:
            old = await self.inner.get_record(kind, key)
            started = old is None or old.get("since") != value.get("since")
        await self.inner.put_record(kind, key, value, ttl_s)
        if started:
            self.counts[key] = self.counts.get(key, 0) + 1


def holds_started(store: Store) -> dict[str, int]:
    """Holds counted by `store` if it is a HoldCounter (the compile loop's), else none."""
    return dict(store.counts) if isinstance(store, HoldCounter) else {}


class _Status:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        d = self.doc
        yield _g("glassmesh_control_config_version", "Version of the mesh config in force", d["config_version"])
        yield _g("glassmesh_control_store_revision", "Store revision this replica answers at", d["revision"])
        yield _g("glassmesh_control_replicas", "Control-plane replicas seen alive", len(d["replicas"]))
        yield _g("glassmesh_control_compile_failing", "1 while the last compile failed", 1 if d["compile_error"] else 0)
        held = GaugeMetricFamily("glassmesh_control_held_changes",
                                 "Changes the blast-radius guard holds back now, by service (1 held, 0 not)",
                                 labels=["service"])
        now = {h.get("service", "") for h in d["held"]}
        started: dict[str, int] = d.get("holds_started") or {}
        for svc in sorted(now | set(started)):
            held.add_metric([svc], 1 if svc in now else 0)
        yield held
        holds = CounterMetricFamily("glassmesh_control_holds",
                                    "Changes this replica held back since it started, by service",
                                    labels=["service"])
        for svc, n in sorted(started.items()):
            holds.add_metric([svc], n)
        yield holds
        yield _g("glassmesh_control_held_services", "Services with a change the guard holds back now", len(d["held"]))
        # The same figure under its old name, kept one release (until 0.3) so that alerts on it keep
        # working while they move: a gauge must not end in _total, which says "counter".
        yield _g(DEPRECATED_HELD, "DEPRECATED (removed in 0.3): use glassmesh_control_held_services",
                 len(d["held"]))
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
        rejects = CounterMetricFamily("glassmesh_control_snapshot_rejects",
                                      "Snapshots a host's proxy refused (see glassmesh status for the reasons)",
                                      labels=["host"])
        for h in d["hosts"]:
            rejects.add_metric([h["name"]], h.get("rejects", 0))
        yield rejects
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
    ProcessCollector(registry=reg)  # process_*: this replica's process (CPU, memory, open files, start time)
    return generate_latest(reg)
