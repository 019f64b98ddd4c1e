"""A classic pcap file of synthetic TCP flows: bytes in, packets out, no sockets (sans-IO).

`glassmesh capture` turns what a proxy recorded of a link (the plaintext
HTTP/1 bytes of each exchange) into packets that tcpdump, tshark and
Wireshark read as ordinary TCP: a three-way handshake, data segments with
the sequence and acknowledgement numbers a real stack would use, an ACK for
each burst, and FIN both ways. Ethernet frames (the link type every tool
opens) over IPv4 or IPv6; checksums are computed.

Bytes the proxy counted but did not keep (past a capture's per-exchange
limit) are written the way a snap length writes them: the packet says how
long it was (orig_len) and holds only its headers (incl_len), and the
sequence numbers move on by the full length, so the flow stays consistent
and the tools mark the packet "[Packet size limited during capture]".
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator

MAGIC = 0xA1B2C3D4  # microsecond timestamps
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144
MSS = 16384  # bytes of payload per segment (what a loopback interface would carry, roughly)
GAP_SEGMENT = 65000  # payload counted per packet for bytes not kept (IPv4's total length is 16 bits)
WINDOW = 65535
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10
_MAC_CLIENT = bytes.fromhex("020000000001")  # locally administered
_MAC_SERVER = bytes.fromhex("020000000002")


def file_header(snaplen: int = SNAPLEN) -> bytes:
    return struct.pack("<IHHiIII", MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def record(ts: float, frame: bytes, orig_len: int | None = None) -> bytes:
    """One packet record: its time, the bytes kept, and how long it was (when more than was kept)."""
    sec = int(ts)
    usec = int(round((ts - sec) * 1e6))
    if usec >= 1000000:
        sec, usec = sec + 1, usec - 1000000
    return struct.pack("<IIII", sec, usec, len(frame), orig_len if orig_len is not None else len(frame)) + frame


def _v6(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ip if isinstance(ip, ipaddress.IPv6Address) else ipaddress.IPv6Address(f"::ffff:{ip}")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class TcpFlow:
    """One TCP connection, client to server, as packets; each method returns pcap records (bytes).

    The caller says what each side sent and when; the flow keeps the sequence
    numbers: seq of each side starts at its ISN, SYN and FIN count one.
    """

    def __init__(self, client: tuple[str, int], server: tuple[str, int], isn_client: int = 1000,
                 isn_server: int = 5000, ip_id: int = 1) -> None:
        c_ip, s_ip = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
        if c_ip.version != s_ip.version:  # one flow, one IP version: the v4 end as its v4-mapped address
            c_ip, s_ip = _v6(c_ip), _v6(s_ip)
        self.v6 = s_ip.version == 6
        self.addr = {True: (c_ip.packed, client[1]), False: (s_ip.packed, server[1])}
        self.seq = {True: isn_client & 0xFFFFFFFF, False: isn_server & 0xFFFFFFFF}
        self.ip_id = ip_id
        self.opened = False
        self.closed = False

    # --- what the caller says happened -------------------------------------------------------------
    def open(self, ts: float) -> list[bytes]:
        """The three-way handshake."""
        self.opened = True
        out = [self._packet(ts, True, SYN, b"", ack=False)]
        self.seq[True] += 1
        out.append(self._packet(ts, False, SYN | ACK, b""))
        self.seq[False] += 1
        out.append(self._packet(ts, True, ACK, b""))
        return out

    def send(self, ts: float, from_client: bool, data: bytes, missing: int = 0) -> list[bytes]:
        """`data` from one side (then `missing` more bytes that were not kept), and the other side's ACK."""
        out: list[bytes] = []
        if not self.opened:
            out += self.open(ts)
        for i in range(0, len(data), MSS):
            piece = data[i:i + MSS]
            last = i + MSS >= len(data) and not missing
            out.append(self._packet(ts, from_client, ACK | (PSH if last else 0), piece))
            self.seq[from_client] += len(piece)
        while missing > 0:
            n = min(missing, GAP_SEGMENT)
            missing -= n
            out.append(self._packet(ts, from_client, ACK | (0 if missing else PSH), b"", gap=n))
            self.seq[from_client] += n
        if data or out:
            out.append(self._packet(ts, not from_client, ACK, b""))
        return out

    def close(self, ts: float) -> list[bytes]:
        """FIN from the client, FIN from the server, the last ACK."""
        if self.closed or not self.opened:
            return []
        self.closed = True
        out = [self._packet(ts, True, FIN | ACK, b"")]
        self.seq[True] += 1
        out.append(self._packet(ts, False, FIN | ACK, b""))
        self.seq[False] += 1
        out.append(self._packet(ts, True, ACK, b""))
        return out

    # --- packets ----------------------------------------------------------------------------------------
    def _packet(self, ts: float, from_client: bool, flags: int, payload: bytes, ack: bool = True,
                gap: int = 0) -> bytes:
        src_ip, sport = self.addr[from_client]
        dst_ip, dport = self.addr[not from_client]
        seq = self.seq[from_client] & 0xFFFFFFFF
        ackn = self.seq[not from_client] & 0xFFFFFFFF if ack else 0
        tcp_len = 20 + len(payload) + gap
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ackn, 5 << 4, flags, WINDOW, 0, 0)
        if self.v6:
            pseudo = src_ip + dst_ip + struct.pack("!IxxxB", tcp_len, 6)
        else:
            pseudo = src_ip + dst_ip + struct.pack("!xBH", 6, tcp_len)
        if not gap:  # a packet not kept whole has no checksum to compute (tools do not check it by default)
            csum = _checksum(pseudo + tcp + payload)
            tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        if self.v6:
            ip = struct.pack("!IHBB", 6 << 28, tcp_len, 6, 64) + src_ip + dst_ip
            ethertype = 0x86DD
        else:
            self.ip_id = (self.ip_id + 1) & 0xFFFF
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + tcp_len, self.ip_id, 0x4000, 64, 6, 0, src_ip, dst_ip)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            ethertype = 0x0800
        macs = (_MAC_SERVER + _MAC_CLIENT) if from_client else (_MAC_CLIENT + _MAC_SERVER)
        frame = macs + struct.pack("!H", ethertype) + ip + tcp + payload
        return record(ts, frame, len(frame) + gap if gap else None)


def read_records(data: bytes) -> Iterator[tuple[float, bytes, int]]:
    """(ts, frame, orig_len) of each record of a classic pcap file: for tests and checks."""
    magic, = struct.unpack("<I", data[:4])
    if magic != MAGIC:
        raise ValueError("not a little-endian microsecond pcap file")
    off = 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack("<IIII", data[off:off + 16])
        off += 16
        yield sec + usec / 1e6, data[off:off + incl], orig
        off += incl
