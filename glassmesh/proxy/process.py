"""`process_*` metrics for a proxy that may be several processes.

prometheus_client's ProcessCollector describes the process that serves the
scrape. With `--workers N` that is the supervisor, which carries no traffic,
so its figures alone would say a busy proxy is idle. Each worker samples
itself into its stats dump instead (read from /proc/self at scrape time, off
the request path), and the supervisor adds its own: the admin port's
`process_*` describe the whole proxy, as `top` would sum it. CPU seconds,
memory and open file descriptors are summed over the processes; the start
time is the earliest (the supervisor's: a worker restarted after a crash does
not look like a proxy restart); `process_max_fds` is the limit of one process.
`glassmesh_processes` says how many processes were summed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

_HELP = {
    "process_cpu_seconds_total": "Total user and system CPU time spent in seconds (all of the proxy's processes)",
    "process_resident_memory_bytes": "Resident memory size in bytes (all of the proxy's processes)",
    "process_virtual_memory_bytes": "Virtual memory size in bytes (all of the proxy's processes)",
    "process_open_fds": "Number of open file descriptors (all of the proxy's processes)",
    "process_max_fds": "Maximum number of open file descriptors (of one process)",
    "process_start_time_seconds": "Start time of the process since unix epoch in seconds (the first of the "
                                  "proxy's processes)",
}
_collector: Any = None  # prometheus_client's, made at the first scrape (test_proxy_footprint: not at idle)


def process_sample() -> dict[str, float]:
    """This process's figures, by metric name ({} where /proc is not there to read)."""
    global _collector
    if _collector is None:
        from prometheus_client.process_collector import ProcessCollector

        _collector = ProcessCollector(registry=None)
    out: dict[str, float] = {}
    for fam in _collector.collect():
        for s in fam.samples:
            out[s.name] = s.value
    if out:
        out["processes"] = 1
    return out


def merge_process(samples: Iterable[dict[str, float]]) -> dict[str, float]:
    """Several processes' samples as one proxy's (see the module docstring)."""
    out: dict[str, float] = {}
    for s in samples:
        if not s:
            continue
        for name, v in s.items():
            if name == "process_start_time_seconds":
                out[name] = min(out.get(name, v), v)
            elif name == "process_max_fds":
                out[name] = max(out.get(name, v), v)
            else:
                out[name] = out.get(name, 0) + v
    return out


def process_families(sample: dict[str, float] | None) -> Iterator[Any]:
    if not sample:
        return
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for name, doc in _HELP.items():
        if name not in sample:
            continue
        if name == "process_cpu_seconds_total":
            fam: Any = CounterMetricFamily("process_cpu_seconds", doc)
        else:
            fam = GaugeMetricFamily(name, doc)
        fam.add_metric([], sample[name])
        yield fam
    n = GaugeMetricFamily("glassmesh_processes", "Processes the process_* metrics sum: the proxy, or with "
                                                 "--workers its supervisor and workers")
    n.add_metric([], sample.get("processes", 1))
    yield n

