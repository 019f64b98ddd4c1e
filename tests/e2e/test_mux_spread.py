"""A busy multiplexed link spreads over a few TLS connections, so an inbound proxy's workers all get some.

The kernel hands an inbound proxy's workers connections, not requests: a link
carried by one TLS connection would keep every worker but one idle.
"""

from __future__ import annotations

import threading

from glassmesh.proxy.pool import MUX_CONNS_MAX, MUX_STREAM_REQUESTS
from tests.e2e.harness import HttpConn, Mesh, metric


def busy(mesh: Mesh, inbound_workers: int) -> tuple[list[int], float, float]:
    """16 keep-alive clients x 200 requests a -> b; (statuses, open connections, handshakes) on host1's link."""
    h1 = mesh.add_host("host1")
    h2 = mesh.add_host("host2")
    h1.client("a")
    h2.http_app("b")
    mesh.start_proxy(h1)
    mesh.start_proxy(h2, workers=inbound_workers)
    statuses: list[int] = []
    per_client = MUX_STREAM_REQUESTS * 2

    def client() -> None:
        with HttpConn(h1.outbound()) as c:
            for i in range(per_client):
                statuses.append(c.request("GET", f"http://b/spread/{i}", {"Host": "b"}).status)

    threads = [threading.Thread(target=client) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(statuses) == 16 * per_client and set(statuses) == {200}
    link = {"side": "outbound", "source": "a", "destination": "b"}
    m = h1.metrics()
    return statuses, metric(m, "glassmesh_open_connections", **link), metric(
        m, "glassmesh_tls_handshakes_total", **link)


def test_busy_link_spreads_over_several_connections_to_a_proxy_with_workers(mesh: Mesh) -> None:
    statuses, conns, handshakes = busy(mesh, inbound_workers=2)
    assert 2 <= conns <= MUX_CONNS_MAX, f"{conns} connections carry the link"
    assert handshakes <= MUX_CONNS_MAX + 2, f"{handshakes} handshakes for {len(statuses)} requests"


def test_a_link_to_a_single_worker_keeps_one_connection(mesh: Mesh) -> None:
    """One connection batches best; more would only cost CPU when one process takes them all."""
    statuses, conns, handshakes = busy(mesh, inbound_workers=1)
    assert conns == 1 and handshakes == 1, (conns, handshakes)
