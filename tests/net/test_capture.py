"""Captures for Wireshark: a UDP GSO burst on a veth cable holds several transport messages in one
datagram; `split_gso_bursts` turns it into the datagrams a cable carries, and tshark -- not our own
parser -- then decodes and decrypts every one of them."""

import struct

from vpnedu import capture as cap
from vpnedu.packet.ip import build_icmp_echo, checksum

from ..conftest import require_tool

CLIENT, SERVER = "192.0.2.2", "203.0.113.1"   # the in-memory pair's endpoints


def frame(src: str, dst: str, payload: bytes, pad_to: int = 0) -> bytes:
    """An Ethernet frame with an IPv4/UDP datagram (port 51820 both ends); IP total length and UDP
    length cover the whole payload, as in a GSO super-datagram."""
    import socket
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0x4000, 64, 17, 0,
                               socket.inet_aton(src), socket.inet_aton(dst)))
    struct.pack_into("!H", ip, 10, checksum(bytes(ip)))
    udp = struct.pack("!HHHH", 51820, 51820, 8 + len(payload), 0)
    f = bytes(6) + bytes(5) + b"\x01" + b"\x08\x00" + bytes(ip) + udp + payload
    return f + bytes(max(0, pad_to - len(f)))


def write_pcap(path, frames) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)]
    for i, f in enumerate(frames):
        out.append(struct.pack("<IIII", 1_800_000_000 + i, 0, len(f), len(f)) + f)
    path.write_bytes(b"".join(out))


def test_a_gso_burst_becomes_datagrams_tshark_decrypts(pair_factory, tmp_path):
    require_tool("tshark")
    pair = pair_factory()
    keylog = tmp_path / "keys"
    pair.client.keylog = lambda text: keylog.open("a").write(text)
    wire = []
    pair.net.on_wire = lambda data, s, d: wire.append((s[0], d[0], data)) or data
    pair.handshake()
    pings = [build_icmp_echo("10.0.0.2", "10.0.0.1", seq=i, payload=bytes(1200)) for i in range(1, 5)]
    for p in pings:
        pair.client_sends(p)
    hs = [frame(s, d, data) for s, d, data in wire[:3]]            # initiation, response, keepalive
    burst = b"".join(data for _, _, data in wire[3:])               # four pings: one GSO datagram
    assert len({len(d) for _, _, d in wire[3:]}) == 1 and len(burst) > 1500
    pcap = tmp_path / "lab.pcap"
    write_pcap(pcap, [*hs, frame(CLIENT, SERVER, burst)])
    # Before: tshark sees one transport message where four were sent.
    assert [r["wg.type"] for r in cap.decode(pcap)] == ["1", "2", "4", "4"]

    assert cap.split_gso_bursts(pcap) == (1, 4)
    rows = cap.decode(pcap, keylog=keylog, fields=("wg.type", "wg.counter", "ip.src", "ip.dst", "icmp.seq"))
    assert [r["wg.type"] for r in rows] == ["1", "2", "4", "4", "4", "4", "4"]
    assert [r["wg.counter"] for r in rows[2:]] == ["0", "1", "2", "3", "4"]
    # Every ping decrypts, with its inner addresses: the rewritten frames are well-formed.
    assert [r["icmp.seq"] for r in rows[3:]] == ["1", "2", "3", "4"]
    assert all(r["ip.src"] == f"{CLIENT},10.0.0.2" for r in rows[3:])
    assert cap.split_gso_bursts(pcap) == (0, 0)   # nothing left to split


def test_single_messages_and_short_padded_frames_are_left_alone(pair_factory, tmp_path):
    pair = pair_factory()
    wire = []
    pair.net.on_wire = lambda data, s, d: wire.append(data) or data
    pair.handshake()
    pcap = tmp_path / "x.pcap"
    write_pcap(pcap, [frame(CLIENT, SERVER, d, pad_to=60) for d in wire] + [frame(CLIENT, SERVER, b"\x04" * 80)])
    before = pcap.read_bytes()
    assert cap.split_gso_bursts(pcap) == (0, 0) and pcap.read_bytes() == before
    assert cap.wireguard_segments(b"") is None and cap.wireguard_segments(wire[-1]) is None
