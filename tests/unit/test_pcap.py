"""The pcap writer and the capture converter (sans-IO), read back by the real tcpdump and tshark."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from glassmesh.tools.capture import pcap_of
from glassmesh.tools.pcap import FIN, SYN, TcpFlow, file_header, read_records

T0 = 1_800_000_000.25
REQ = b"GET /orders/7?x=1 HTTP/1.1\r\nhost: api\r\nx-request-id: r-1\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


def _tcp(frame: bytes) -> tuple[int, int, int, int, int, bytes]:
    """(sport, dport, seq, ack, flags, payload) of an Ethernet/IPv4 or IPv6 frame."""
    ethertype, = struct.unpack("!H", frame[12:14])
    ip = frame[14:]
    if ethertype == 0x0800:
        ihl = (ip[0] & 0x0F) * 4
        total, = struct.unpack("!H", ip[2:4])
        tcp = ip[ihl:total]
    else:
        plen, = struct.unpack("!H", ip[4:6])
        tcp = ip[40:40 + plen]
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", tcp[:14])
    return sport, dport, seq, ack, flags, tcp[(off >> 4) * 4:]


def _event(chunks: list[tuple[float, str, bytes]], conn: int = 1, more_in: int = 0, path: str = "/orders/7",
           endpoint: str = "127.0.0.2:4443") -> dict:
    return {"method": "GET", "path": path, "host": "a", "pid": 10, "endpoint": endpoint, "ts": chunks[-1][0],
            "wire": {"conn": conn, "local": ["127.0.0.1", 51000],
                     "chunks": [[t, d, base64.b64encode(b).decode()] for t, d, b in chunks],
                     "more_out": 0, "more_in": more_in, "t_last": chunks[-1][0]}}


def test_a_flow_has_a_handshake_data_with_right_numbers_and_fins() -> None:
    f = TcpFlow(("10.0.0.1", 40000), ("10.0.0.2", 80), isn_client=100, isn_server=900)
    recs = f.open(T0) + f.send(T0, True, REQ) + f.send(T0 + 0.001, False, RESP) + f.close(T0 + 0.002)
    data = file_header() + b"".join(recs)
    pkts = [(ts, _tcp(frame)) for ts, frame, _ in read_records(data)]
    flags = [p[1][4] for p in pkts]
    assert flags[0] == SYN and flags[1] == SYN | 0x10 and flags[2] == 0x10
    _, (sport, dport, seq, ack, _, payload) = pkts[3]
    assert (sport, dport, seq, ack, payload) == (40000, 80, 101, 901, REQ)
    _, (sport, dport, seq, ack, _, payload) = pkts[5]
    assert (sport, dport, seq, ack, payload) == (80, 40000, 901, 101 + len(REQ), RESP)
    fins = [p[1] for p in pkts if p[1][4] & FIN]
    assert [x[2] for x in fins] == [101 + len(REQ), 901 + len(RESP)]
    assert pkts[5][0] == pytest.approx(T0 + 0.001, abs=1e-6)


def test_bytes_not_kept_keep_the_sequence_numbers_and_say_their_length() -> None:
    f = TcpFlow(("::1", 40000), ("::1", 80))
    recs = f.send(T0, False, b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nabc", missing=99997)
    recs += f.send(T0, True, b"next")
    rows = list(read_records(file_header() + b"".join(recs)))
    cut = [(frame, orig) for _, frame, orig in rows if orig > len(frame)]
    assert sum(orig - len(frame) for frame, orig in cut) == 99997
    last = _tcp(rows[-2][1])  # the client's next bytes: acknowledged past everything, kept or not
    assert last[5] == b"next"
    assert last[3] == 5001 + len(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\nabc") + 99997


def test_exchanges_on_one_connection_continue_one_flow_and_others_get_their_own() -> None:
    e1 = _event([(T0, "out", REQ), (T0 + 0.01, "in", RESP)], conn=1)
    e2 = _event([(T0 + 1, "out", REQ.replace(b"/orders/7", b"/orders/8")), (T0 + 1.01, "in", RESP)], conn=1)
    e3 = _event([(T0 + 0.5, "out", REQ), (T0 + 0.51, "in", RESP)], conn=2)
    data, summary = pcap_of([e1, e2, e3, {"dropped": 3, "host": "a"}])
    assert (summary.exchanges, summary.flows, summary.bytes_cut) == (3, 2, 0)
    ports = {_tcp(frame)[0] for _, frame, _ in read_records(data) if _tcp(frame)[1] == 80}
    assert len(ports) == 2
    times = [ts for ts, _, _ in read_records(data)]
    assert times == sorted(times)


@pytest.mark.skipif(not shutil.which("tshark") or not shutil.which("tcpdump"), reason="tshark and tcpdump")
def test_tshark_and_tcpdump_read_the_capture_as_http(tmp_path: Path) -> None:
    big = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 200000\r\n\r\n" + b"x" * 100
    events = [_event([(T0, "out", REQ), (T0 + 0.01, "in", RESP)], conn=1),
              _event([(T0 + 1, "out", REQ.replace(b"/orders/7", b"/pay")), (T0 + 1.01, "in", big)], conn=2,
                     more_in=200000 - 100, path="/pay")]
    data, _ = pcap_of(events)
    p = tmp_path / "link.pcap"
    p.write_bytes(data)
    fields = subprocess.run(["tshark", "-r", str(p), "-Y", "http.request", "-T", "fields", "-e", "http.request.uri",
                             "-e", "http.host"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert fields.split("\n")[:2] == ["/orders/7?x=1\tapi", "/pay?x=1\tapi"], fields
    codes = subprocess.run(["tshark", "-r", str(p), "-Y", "http.response", "-T", "fields", "-e",
                            "http.response.code"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert codes.split() == ["200"], codes  # the 503's body was cut: tshark waits for it, as it would on a snap length
    text = subprocess.run(["tcpdump", "-r", str(p), "-A", "-nn"], capture_output=True, text=True, timeout=60,
                          check=True).stdout
    assert "GET /orders/7?x=1 HTTP/1.1" in text and "x-request-id: r-1" in text and "hello" in text
    assert "Flags [S]" in text and "Flags [F.]" in text
