"""Just enough IPv4/IPv6 to route, trim and show packets that cross the tunnel.

A VPN moves whole IP packets.  The tunnel itself needs only three facts from
each one: its **destination** (to choose the peer whose AllowedIPs holds it),
its **source** (to check that a decrypted packet really comes from an address
that peer may use), and its **length** (the sender pads every packet to a
multiple of 16 bytes before encrypting, to hide its exact size; the receiver
cuts the padding off using the length in the IP header).

IPv4 header (RFC 791), the fields used here::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    |Version|  IHL  |Type of Service|          Total Length         |
    |         Identification        |Flags|      Fragment Offset    |
    |  Time to Live |    Protocol   |         Header Checksum       |
    |                       Source Address                          |
    |                    Destination Address                        |

IPv6 header (RFC 8200, section 3): fixed 40 bytes, no checksum (the transport's checksum
covers the addresses through a pseudo-header, so UDP's is mandatory over IPv6)::

    |Version| Traffic Class |           Flow Label                  |
    |         Payload Length        |  Next Header  |   Hop Limit   |
    |                  Source Address (16 bytes)                    |
    |               Destination Address (16 bytes)                  |
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..errors import MessageError

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
PROTO_NAMES = {PROTO_ICMP: "ICMP", PROTO_TCP: "TCP", PROTO_UDP: "UDP", PROTO_ICMPV6: "ICMPv6"}


def ip_version(packet: bytes) -> int:
    return packet[0] >> 4 if packet else 0


def ip_length(packet: bytes) -> int | None:
    """The length the IP header claims, or None if this is not a plausible IP packet."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        length = (packet[2] << 8) | packet[3]
        return length if 20 <= length <= n else None
    if n >= 40 and packet[0] >> 4 == 6:
        length = 40 + ((packet[4] << 8) | packet[5])
        return length if length <= n else None
    return None


def source_address(packet: bytes) -> bytes:
    """The raw source address (4 or 16 bytes)."""
    return packet[12:16] if packet[0] >> 4 == 4 else packet[8:24]


def destination_address(packet: bytes) -> bytes:
    """The raw destination address (4 or 16 bytes)."""
    return packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]


def addresses(packet: bytes) -> tuple[str, str]:
    """An IPv4 or IPv6 packet's (source, destination) as text, in the form sockets report them."""
    if packet[0] >> 4 == 6:
        return (str(ipaddress.IPv6Address(bytes(packet[8:24]))),
                str(ipaddress.IPv6Address(bytes(packet[24:40]))))
    return str(ipaddress.IPv4Address(bytes(packet[12:16]))), str(ipaddress.IPv4Address(bytes(packet[16:20])))


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(slots=True)
class IPPacket:
    """A decoded IP packet: what :class:`IPv4Packet` and :class:`IPv6Packet` both give."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    protocol: int
    ttl: int
    ident: int
    header_length: int
    total_length: int
    payload: bytes


@dataclass(slots=True)
class IPv4Packet(IPPacket):
    """A decoded IPv4 packet."""

    @classmethod
    def parse(cls, packet: bytes) -> "IPv4Packet":
        if len(packet) < 20:
            raise MessageError(f"IPv4 packet of {len(packet)} bytes is shorter than a header")
        if packet[0] >> 4 != 4:
            raise MessageError(f"not IPv4 (version {packet[0] >> 4})")
        ihl = (packet[0] & 0xF) * 4
        total = (packet[2] << 8) | packet[3]
        if ihl < 20 or total < ihl or total > len(packet):
            raise MessageError("IPv4 header length fields are inconsistent with the packet size")
        return cls(ipaddress.IPv4Address(packet[12:16]), ipaddress.IPv4Address(packet[16:20]),
                   packet[9], packet[8], (packet[4] << 8) | packet[5], ihl, total,
                   bytes(packet[ihl:total]))


@dataclass(slots=True)
class IPv6Packet(IPPacket):
    """A decoded IPv6 packet, with the same fields as :class:`IPv4Packet` (``protocol`` is the
    Next Header, ``ttl`` the Hop Limit; there is no identification field, so ``ident`` is 0).
    Extension headers are not followed: the simulation and the course send none."""

    @classmethod
    def parse(cls, packet: bytes) -> "IPv6Packet":
        if len(packet) < 40:
            raise MessageError(f"IPv6 packet of {len(packet)} bytes is shorter than a header")
        if packet[0] >> 4 != 6:
            raise MessageError(f"not IPv6 (version {packet[0] >> 4})")
        total = 40 + ((packet[4] << 8) | packet[5])
        if total > len(packet):
            raise MessageError("IPv6 payload length is larger than the packet")
        return cls(ipaddress.IPv6Address(bytes(packet[8:24])), ipaddress.IPv6Address(bytes(packet[24:40])),
                   packet[6], packet[7], 0, 40, total, bytes(packet[40:total]))


def parse(packet: bytes) -> IPv4Packet | IPv6Packet:
    """Decode an IPv4 or IPv6 packet, by its version nibble."""
    if packet and packet[0] >> 4 == 6:
        return IPv6Packet.parse(packet)
    return IPv4Packet.parse(packet)


def build_ipv4(src: str, dst: str, protocol: int, payload: bytes, *, ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 packet with a correct header checksum."""
    total = 20 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, ttl, protocol, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def build_ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    """An IPv6 packet (no extension headers; IPv6 has no header checksum)."""
    return (struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def build_ip(src: str, dst: str, protocol: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 packet, by the family of the addresses."""
    if ipaddress.ip_address(src).version == 6:
        return build_ipv6(src, dst, protocol, payload)
    return build_ipv4(src, dst, protocol, payload)


#: ICMP echo request / reply types: ICMP for IPv4 (RFC 792) and ICMPv6 (RFC 4443, 4.1 and 4.2).
ECHO_REQUEST, ECHO_REPLY = 8, 0
ECHO_REQUEST6, ECHO_REPLY6 = 128, 129
#: (request, reply) per IP version.
ECHO_TYPES = {4: (ECHO_REQUEST, ECHO_REPLY), 6: (ECHO_REQUEST6, ECHO_REPLY6)}


def build_icmp_echo(src: str, dst: str, ident: int = 1, seq: int = 1, payload: bytes = b"vpnedu ping",
                    reply: bool = False) -> bytes:
    """An ICMP echo request (or reply): what ``ping`` sends.  Between IPv6 addresses it is
    ICMPv6's (RFC 4443, section 4: type 128 request, 129 reply), whose checksum, unlike
    ICMPv4's, covers the pseudo-header too (section 2.3)."""
    if ipaddress.ip_address(src).version == 6:
        icmp = struct.pack("!BBHHH", ECHO_REPLY6 if reply else ECHO_REQUEST6, 0, 0, ident, seq) + payload
        icmp = icmp[:2] + struct.pack("!H", transport_checksum(src, dst, PROTO_ICMPV6, icmp)) + icmp[4:]
        return build_ipv6(src, dst, PROTO_ICMPV6, icmp)
    icmp = struct.pack("!BBHHH", ECHO_REPLY if reply else ECHO_REQUEST, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return build_ipv4(src, dst, PROTO_ICMP, icmp)


def build_udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """A UDP datagram over IPv4 (checksum 0, which IPv4 allows) or IPv6 (where the checksum is
    mandatory: RFC 8200, section 8.1)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if ipaddress.ip_address(src).version == 6:
        udp = udp[:6] + struct.pack("!H", transport_checksum(src, dst, PROTO_UDP, udp) or 0xFFFF) + udp[8:]
        return build_ipv6(src, dst, PROTO_UDP, udp)
    return build_ipv4(src, dst, PROTO_UDP, udp)


def transport_checksum(src: str, dst: str, protocol: int, segment: bytes) -> int:
    """TCP, UDP (and ICMPv6) checksums cover a pseudo-header of the IP addresses, protocol and
    length: RFC 793 for IPv4's, RFC 8200 section 8.1 for IPv6's (32-bit length, then the
    Next Header)."""
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if a.version == 6:
        pseudo = a.packed + b.packed + struct.pack("!IxxxB", len(segment), protocol)
    else:
        pseudo = a.packed + b.packed + struct.pack("!BBH", 0, protocol, len(segment))
    return checksum(pseudo + segment)


def build_tcp(src: str, sport: int, dst: str, dport: int, *, seq: int = 0, ack: int = 0,
              flags: int = 0, window: int = 0, payload: bytes = b"") -> bytes:
    """An IPv4/TCP or IPv6/TCP segment with a correct checksum (no options)."""
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      window, 0, 0) + payload
    seg = seg[:16] + struct.pack("!H", transport_checksum(src, dst, PROTO_TCP, seg)) + seg[18:]
    return build_ip(src, dst, PROTO_TCP, seg)


TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def build_tcp_reset_for(syn: bytes) -> bytes:
    """The RST|ACK a host sends back when a SYN reaches a closed port (RFC 9293, 3.10.7.1):
    sequence 0, acknowledging the SYN's sequence number + 1. The connecting program sees
    ECONNREFUSED, "connection refused".  Either family."""
    ip = parse(syn)
    sport, dport, seq = struct.unpack("!HHI", ip.payload[:8])
    return build_tcp(str(ip.dst), dport, str(ip.src), sport, seq=0, ack=seq + 1, flags=TCP_RST | TCP_ACK)


def build_icmp_unreachable(original: bytes, src: str, code: int | None = None) -> bytes:
    """ICMP destination unreachable (type 3; code 1 = host unreachable) about ``original``,
    quoting its IP header and first 8 payload bytes as RFC 792 requires, sent by ``src``.
    For an IPv6 ``original`` it is ICMPv6's (type 1; code 3 = address unreachable, which a
    Linux program sees as EHOSTUNREACH, as code 1 for IPv4), quoting as much of the packet as
    fits in IPv6's minimum MTU of 1280 bytes (RFC 4443, 3.1), with the pseudo-header checksum."""
    if ip_version(original) == 6:
        ip6 = IPv6Packet.parse(original)
        quote = bytes(original[:ip6.total_length])[:1280 - 40 - 8]
        icmp = struct.pack("!BBHI", 1, 3 if code is None else code, 0, 0) + quote
        dst = str(ip6.src)
        icmp = icmp[:2] + struct.pack("!H", transport_checksum(src, dst, PROTO_ICMPV6, icmp)) + icmp[4:]
        return build_ipv6(src, dst, PROTO_ICMPV6, icmp)
    code = 1 if code is None else code
    ip = IPv4Packet.parse(original)
    quote = bytes(original[:ip.header_length + 8])
    icmp = struct.pack("!BBHI", 3, code, 0, 0) + quote
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return build_ipv4(src, str(ip.src), PROTO_ICMP, icmp)


def describe(packet: bytes) -> str:
    """A one-line, tcpdump-like description of an IPv4 or IPv6 packet."""
    v = ip_version(packet)
    if v not in (4, 6):
        return f"not an IP packet ({len(packet)} bytes)"
    try:
        p = parse(packet)
    except MessageError as e:
        return f"malformed IPv{v} ({e})"
    proto = PROTO_NAMES.get(p.protocol, f"proto {p.protocol}" if v == 4 else f"next-header {p.protocol}")
    if p.protocol in (PROTO_TCP, PROTO_UDP) and len(p.payload) >= 4:
        sport, dport = struct.unpack("!HH", p.payload[:4])
        src, dst = (f"[{a}]" if v == 6 else str(a) for a in (p.src, p.dst))
        return f"IPv{v} {src}:{sport} > {dst}:{dport} {proto} len={p.total_length}"
    extra = ""
    if p.protocol == (PROTO_ICMP if v == 4 else PROTO_ICMPV6) and len(p.payload) >= 8:
        t, _, _, ident, seq = struct.unpack("!BBHHH", p.payload[:8])
        kind = dict(zip(ECHO_TYPES[v], ("echo request", "echo reply"))).get(t)
        extra = f" {kind} id={ident} seq={seq}" if kind else f" type {t}"
    return f"IPv{v} {p.src} > {p.dst} {proto}{extra} len={p.total_length}"
