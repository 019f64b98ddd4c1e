"""Tap events with wire bytes (api/tap.py `wire`) as a pcap file: one TCP flow per upstream connection.

Sans-IO: events in, bytes out. The proxy recorded each exchange's HTTP/1
bytes as they went to the next hop and came back (plaintext: the proxy is
where TLS ends); exchanges that rode the same upstream connection continue
one flow, as they did on the wire, with sequence numbers that run on.

Addresses: the server end is the endpoint's IP with port 80, so that every
tool decodes HTTP without being told a port (the real port is in the event,
and in `glassmesh tap`); the client end is the proxy's own address where the
socket gave one, else the endpoint's, each flow with a port of its own.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from glassmesh.tools.pcap import TcpFlow, file_header

SERVER_PORT = 80
CLIENT_PORT0 = 40000


@dataclass
class CaptureSummary:
    exchanges: int = 0
    flows: int = 0
    bytes_kept: int = 0
    bytes_cut: int = 0  # counted on the wire but past the capture's limit
    without_wire: int = 0  # events with no bytes (a mesh error before anything was sent)
    hosts: set[str] = field(default_factory=set)


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def pcap_of(events: list[dict[str, Any]]) -> tuple[bytes, CaptureSummary]:
    """The pcap file of the exchanges in `events` (others, like `dropped` lines, are skipped)."""
    summary = CaptureSummary()
    flows: dict[tuple[Any, ...], TcpFlow] = {}
    packets: list[tuple[float, int, bytes]] = []  # (time, order, record): sorted by time at the end
    end = 0.0

    def emit(ts: float, records: list[bytes]) -> None:
        for r in records:
            packets.append((ts, len(packets), r))

    for ev in sorted((e for e in events if "method" in e), key=lambda e: _first_ts(e)):
        w = ev.get("wire")
        if not w or not w.get("chunks"):
            summary.without_wire += 1
            continue
        summary.exchanges += 1
        summary.hosts.add(str(ev.get("host")))
        key = (ev.get("host"), ev.get("pid"), w.get("conn"), ev.get("endpoint"))
        flow = flows.get(key)
        if flow is None:
            server_ip, _ = split_endpoint(str(ev.get("endpoint") or "127.0.0.1:0"))
            local = w.get("local")
            client_ip = str(local[0]) if local else server_ip
            n = len(flows)
            flow = flows[key] = TcpFlow((client_ip, CLIENT_PORT0 + n), (server_ip, SERVER_PORT),
                                        isn_client=1_000_000 * (n + 1), isn_server=500_000_000 + 1_000_000 * n)
        chunks = [(float(t), d == "out", base64.b64decode(b)) for t, d, b in w["chunks"]]
        last_out = max((i for i, c in enumerate(chunks) if c[1]), default=-1)
        more_out, more_in = int(w.get("more_out", 0)), int(w.get("more_in", 0))
        t_last = float(w.get("t_last") or chunks[-1][0])
        for i, (ts, out, data) in enumerate(chunks):
            emit(ts, flow.send(ts, out, data, more_out if i == last_out else 0))
            summary.bytes_kept += len(data)
        if last_out < 0 and more_out:
            emit(t_last, flow.send(t_last, True, b"", more_out))
        if more_in:
            emit(t_last, flow.send(t_last, False, b"", more_in))
        summary.bytes_cut += more_out + more_in
        end = max(end, t_last, chunks[-1][0])
    for flow in flows.values():
        emit(end, flow.close(end))
    summary.flows = len(flows)
    packets.sort(key=lambda p: (p[0], p[1]))
    return file_header() + b"".join(p[2] for p in packets), summary


def _first_ts(ev: dict[str, Any]) -> float:
    w = ev.get("wire") or {}
    chunks = w.get("chunks") or []
    return float(chunks[0][0]) if chunks else float(ev.get("ts", 0.0))
