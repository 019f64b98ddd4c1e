"""`glassmesh demo`: run the three-host demo mesh on loopback addresses and show its links live."""

from __future__ import annotations

import click


@click.command()
@click.option("--duration", type=click.FloatRange(min=0), default=0, show_default=True,
              help="Seconds to run, then print a summary and exit: 0 when no request failed (0 = until Ctrl-C).")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the demo's files (mesh.yaml, the control plane's store, CA, each host's certs and "
                   "last-known-good snapshot, topology.json, logs) here. "
                   "Default: a temporary directory removed at exit.")
@click.option("--rate", type=click.FloatRange(min=0), default=50, show_default=True,
              help="Requests per second the traffic generator sends to A (0 = as fast as it can).")
@click.option("--connections", type=click.IntRange(min=1), default=4, show_default=True,
              help="Keep-alive connections the traffic generator uses.")
def demo(duration: float, state_dir: str | None, rate: float, connections: int) -> None:
    """Three hosts (proxies on 127.0.0.11-13), A calling B (2 instances) and C over mutual TLS.

    Starts the control plane (127.0.0.1:4200), applies a mesh.yaml, and runs
    the proxies under it. Prints, about once a second, each link's requests/s,
    success rate, p50/p99 latency, whether it is mutual TLS and which host
    served it, and every snapshot the control plane pushes. Part way through
    (at 40% of --duration, or 10 s in) it stops B on host2 and starts it again
    a few seconds later: its traffic moves to host3 and back with no failed request.
    Ctrl-C stops every process.
    """
    from glassmesh.demo.runner import Options, run_demo

    rc = run_demo(Options(duration=duration, state_dir=state_dir, rate=rate, connections=connections))
    raise SystemExit(rc)
