"""IPv4/IPv6 packets built by vpnedu.packet.ip, judged by a real decoder (tshark), not by our code:
a checksum we get wrong on the pseudo-header is exactly what our own parser would not notice."""

import struct
import subprocess

import pytest

from tests.conftest import require_tool
from vpnedu.packet import ip


def tshark_fields(packets: list[bytes], tmp_path, *fields: str) -> list[list[str]]:
    """Write the packets as a pcap of raw IP (LINKTYPE_RAW, 101) and let tshark decode them,
    with UDP checksum validation on (it is off by default)."""
    path = tmp_path / "p.pcap"
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for p in packets:
            f.write(struct.pack("<IIII", 0, 0, len(p), len(p)) + p)
    r = subprocess.run(["tshark", "-r", str(path), "-o", "udp.check_checksum:TRUE", "-T", "fields",
                        *[a for fld in fields for a in ("-e", fld)]], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


def test_icmpv6_echo_and_udp_over_ipv6_have_checksums_tshark_accepts(tmp_path):
    require_tool("tshark")
    echo = ip.build_icmp_echo("2001:db8:c::2", "2001:db8:a::80", ident=0x7e57, seq=3, payload=b"vpnedu")
    reply = ip.build_icmp_echo("2001:db8:a::80", "2001:db8:c::2", ident=0x7e57, seq=3, payload=b"vpnedu", reply=True)
    udp = ip.build_udp("fd00:1::2", 40000, "2001:db8:a::80", 8080, b"hello")
    rows = tshark_fields([echo, reply, udp], tmp_path, "ipv6.src", "ipv6.dst", "icmpv6.type",
                         "icmpv6.checksum.status", "udp.dstport", "udp.checksum.status")
    assert rows[0][:4] == ["2001:db8:c::2", "2001:db8:a::80", "128", "1"]        # 1: "Good"
    assert rows[1][2:4] == ["129", "1"]
    assert rows[2][4:] == ["8080", "1"]
    assert ip.describe(echo) == "IPv6 2001:db8:c::2 > 2001:db8:a::80 ICMPv6 echo request id=32343 seq=3 len=54"
    assert ip.describe(udp) == "IPv6 [fd00:1::2]:40000 > [2001:db8:a::80]:8080 UDP len=53"


def test_a_wrong_checksum_is_seen_by_tshark(tmp_path):
    """The check above can fail: one flipped payload byte and tshark calls the checksum bad."""
    require_tool("tshark")
    bad = bytearray(ip.build_icmp_echo("2001:db8:c::2", "2001:db8:a::80", payload=b"vpnedu"))
    bad[-1] ^= 1
    assert tshark_fields([bytes(bad)], tmp_path, "icmpv6.checksum.status") == [["0"]]


def test_parse_reads_both_families_and_refuses_a_short_ipv6_packet():
    p = ip.parse(ip.build_udp("2001:db8::1", 1, "2001:db8::2", 2, b"x"))
    assert isinstance(p, ip.IPv6Packet) and str(p.dst) == "2001:db8::2" and p.protocol == ip.PROTO_UDP
    assert p.payload[8:] == b"x" and p.total_length == 49
    assert isinstance(ip.parse(ip.build_udp("10.0.0.2", 1, "10.0.0.1", 2, b"x")), ip.IPv4Packet)
    with pytest.raises(Exception, match="shorter than a header"):
        ip.IPv6Packet.parse(b"\x60" + bytes(20))
