"""Segmentation offloads on a TUN device: TSO super-packets in, coalesced (GRO) packets out.

A TUN device opened with ``IFF_VNET_HDR`` puts a 10-byte ``struct virtio_net_hdr``
(``include/uapi/linux/virtio_net.h``) in front of every packet, both ways::

    flags(1) gso_type(1) hdr_len(2) gso_size(2) csum_start(2) csum_offset(2)   native byte order

With ``TUNSETOFFLOAD`` (``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``) the kernel stops cutting a TCP
stream into MTU-sized packets before handing it to us.  One ``read()`` then returns a *super-packet*
of up to 64 KiB: one IP header, one TCP header and the payload of many segments, with
``gso_type = TCPV4/TCPV6``, ``gso_size = MSS`` and ``flags = NEEDS_CSUM`` (the TCP checksum field
holds only the pseudo-header sum: the "hardware" -- us -- must finish it).

WireGuard's wire format carries one inner packet per transport message, and every outer
datagram must fit the path MTU, so the sender splits the super-packet itself
(:func:`split_tso`): for every segment an IP header (total length, a fresh IPv4 ID and header
checksum), a TCP header (sequence number, FIN/PSH only on the last segment, CWR only on the
first) and a full TCP checksum -- exactly what the kernel's software GSO would have produced.

The receiver does the opposite (:func:`coalesce`): consecutive in-order segments of one TCP
flow become one super-packet written with ``gso_type = TCPV4/TCPV6`` and ``NEEDS_CSUM``, so the
kernel's TCP stack takes one packet instead of forty.  Like the Linux WireGuard module (which
marks every decrypted packet ``CHECKSUM_UNNECESSARY``) we do not re-verify the inner TCP
checksums of what we coalesce: the AEAD tag already proved that the peer sent these bytes.

Checksums without numpy: the Internet checksum is the one's-complement sum of 16-bit words,
and since 2**16 = 1 (mod 0xFFFF), that sum is the big-endian integer value of the bytes modulo
0xFFFF -- ``int.from_bytes(data, "big") % 0xFFFF`` computes it at C speed.
"""

from __future__ import annotations

import struct

#: ``struct virtio_net_hdr`` (native byte order, as the TUN driver uses unless told otherwise).
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10

# virtio_net_hdr.flags
NEEDS_CSUM = 1
DATA_VALID = 2
# virtio_net_hdr.gso_type
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

#: A header that says "a plain packet, nothing to do".
PLAIN_HDR = bytes(VNET_HDR_LEN)

TCP_FIN = 0x01
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_CWR = 0x80
PROTO_TCP = 6
PROTO_UDP = 17

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_pack16 = _U16.pack_into
_pack32 = _U32.pack_into


class OffloadError(ValueError):
    """A virtio-net header or super-packet we cannot handle (dropped and counted)."""


# ---------------------------------------------------------------------- checksums
def ones_sum(data, initial: int = 0) -> int:
    """One's-complement sum of ``data`` as 16-bit big-endian words (an odd last byte is padded
    with a zero), plus ``initial``, reduced modulo 0xFFFF.  The result is congruent to the folded
    RFC 1071 sum (0 and 0xFFFF are the same number in one's complement)."""
    x = int.from_bytes(data, "big")
    if len(data) & 1:
        x <<= 8
    return (x + initial) % 0xFFFF


def checksum_field(total: int) -> int:
    """The value to store in a checksum field, given the sum of everything it covers (with the
    field itself zero): the one's complement of the folded sum, as the kernel computes it."""
    return (0xFFFF - total % 0xFFFF) % 0xFFFF


def internet_checksum(data, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data`` (what goes into an IPv4/TCP/UDP checksum field)."""
    return checksum_field(ones_sum(data, initial))


def pseudo_header_sum(packet, proto: int, length: int) -> int:
    """Sum of the TCP/UDP pseudo-header (addresses, protocol, transport length) of ``packet``."""
    if packet[0] >> 4 == 4:
        addrs = packet[12:20]
    else:
        addrs = packet[8:40]
    return (int.from_bytes(addrs, "big") + proto + length) % 0xFFFF


def verify_transport_checksum(packet) -> bool:
    """True if the TCP/UDP checksum of a plain IPv4/IPv6 packet is valid (used by tests)."""
    v4 = packet[0] >> 4 == 4
    iph = (packet[0] & 0x0F) * 4 if v4 else 40
    proto = packet[9] if v4 else packet[6]
    seg = packet[iph:]
    return ones_sum(seg, pseudo_header_sum(packet, proto, len(seg))) == 0


# ---------------------------------------------------------------------- reading from TUN
def finish_checksum(pkt: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a ``NEEDS_CSUM`` packet in place: the field at ``csum_start + csum_offset``
    holds the pseudo-header sum; replace it with the full checksum of ``pkt[csum_start:]``."""
    at = csum_start + csum_offset
    if at + 2 > len(pkt):
        raise OffloadError("checksum offset beyond the packet")
    initial = (pkt[at] << 8) | pkt[at + 1]
    pkt[at] = pkt[at + 1] = 0
    value = checksum_field(ones_sum(memoryview(pkt)[csum_start:], initial))
    if value == 0 and csum_offset == 6:   # UDP: 0 means "no checksum"; send 0xFFFF instead
        value = 0xFFFF
    _pack16(pkt, at, value)


def split_tso(packet, gso_type: int, gso_size: int, csum_start: int, mtu: int) -> list[bytearray]:
    """Cut a TCP super-packet (without its virtio-net header) into segments of at most ``mtu``
    bytes, each a complete IP packet with valid IP and TCP checksums -- what the kernel would
    have sent had the TUN device not offered TSO.

    ``gso_size`` is the MSS the kernel chose; a segment never carries more, and never more than
    fits the MTU.  IPv4 IDs count up from the super-packet's, as Linux's GSO does."""
    if gso_type & ~GSO_ECN not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"unsupported GSO type {gso_type}")
    v4 = packet[0] >> 4 == 4
    if v4 != (gso_type & ~GSO_ECN == GSO_TCPV4):
        raise OffloadError("GSO type does not match the IP version")
    iph = csum_start
    if len(packet) < iph + 20:
        raise OffloadError("super-packet shorter than its headers")
    hlen = iph + ((packet[iph + 12] >> 4) * 4)
    total = len(packet)
    mss = min(gso_size, mtu - hlen)
    if mss <= 0 or hlen > total:
        raise OffloadError(f"bad segment size {gso_size} for headers of {hlen} bytes")
    head = bytearray(packet[:hlen])
    # The pseudo-header checksum the kernel left is for the whole super-packet: start from zero.
    head[iph + 16] = head[iph + 17] = 0
    if v4:
        head[10] = head[11] = 0
        ip_id = (head[4] << 8) | head[5]
        pseudo = (int.from_bytes(head[12:20], "big") + PROTO_TCP) % 0xFFFF
    else:
        pseudo = (int.from_bytes(head[8:40], "big") + PROTO_TCP) % 0xFFFF
    seq = int.from_bytes(head[iph + 4:iph + 8], "big")
    flags = head[iph + 13]
    mid_flags = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    out = []
    view = memoryview(packet)
    pos = hlen
    i = 0
    while pos < total or i == 0:
        end = min(pos + mss, total)
        seg = head + view[pos:end]
        n = len(seg)
        if v4:
            _pack16(seg, 2, n)
            _pack16(seg, 4, (ip_id + i) & 0xFFFF)
            _pack16(seg, 10, checksum_field(int.from_bytes(seg[:iph], "big")))
        else:
            _pack16(seg, 4, n - 40)
        _pack32(seg, iph + 4, (seq + pos - hlen) & 0xFFFFFFFF)
        if end < total:
            seg[iph + 13] = mid_flags if i else flags & ~(TCP_FIN | TCP_PSH)
        elif i:
            seg[iph + 13] = flags & ~TCP_CWR
        tl = n - iph
        _pack16(seg, iph + 16, checksum_field(ones_sum(memoryview(seg)[iph:], pseudo + tl)))
        out.append(seg)
        pos = end
        i += 1
    return out


def packets_from_tun(raw, mtu: int) -> list:
    """What one read from a TUN device with a virtio-net header holds, as plain IP packets with
    valid checksums (the readable path; :class:`vpnedu.datapath.FastPath` inlines the same)."""
    if len(raw) < VNET_HDR_LEN:
        raise OffloadError("read shorter than a virtio-net header")
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(raw, 0)
    if gso_type == GSO_NONE:
        pkt = bytearray(raw[VNET_HDR_LEN:]) if flags & NEEDS_CSUM else bytes(raw[VNET_HDR_LEN:])
        if flags & NEEDS_CSUM:
            finish_checksum(pkt, csum_start, csum_offset)
        return [pkt]
    return split_tso(memoryview(raw)[VNET_HDR_LEN:], gso_type, gso_size, csum_start, mtu)


# ---------------------------------------------------------------------- writing to TUN
def tcp_gro_key(pkt) -> tuple | None:
    """If ``pkt`` (bytes or bytearray) may be coalesced, ``(flow, iph, hlen, seq, payload_len,
    psh)``; else None.

    Candidates are what Linux GRO and wireguard-go accept: IPv4 without options or fragments,
    or IPv6 without extension headers, carrying TCP with only ACK (or ACK|PSH) set and a
    non-empty payload.  ``flow`` is everything that must be equal for two segments to merge:
    addresses, ports, ack number, TOS/TTL/DF (IPv4) or traffic class/hop limit (IPv6), and the
    TCP header options."""
    n = len(pkt)
    b0 = pkt[0] if n else 0
    if b0 == 0x45:
        if n < 40 or pkt[9] != PROTO_TCP or (pkt[6] & 0x3F) or pkt[7]:
            return None
        iph = 20
        ip_key = pkt[1:2], pkt[6] & 0xE0, pkt[8:9], pkt[12:20]
    elif b0 >> 4 == 6:
        if n < 60 or pkt[6] != PROTO_TCP:
            return None
        iph = 40
        ip_key = pkt[0:2], pkt[7:8], pkt[8:40]
    else:
        return None
    hlen = iph + ((pkt[iph + 12] >> 4) * 4)
    fl = pkt[iph + 13]
    if hlen > n or hlen < iph + 20 or (fl != TCP_ACK and fl != TCP_ACK | TCP_PSH) or hlen == n:
        return None
    flow = (ip_key, bytes(pkt[iph:iph + 4]), bytes(pkt[iph + 8:iph + 12]), bytes(pkt[iph + 20:hlen]))
    seq = int.from_bytes(pkt[iph + 4:iph + 8], "big")
    return flow, iph, hlen, seq, n - hlen, fl & TCP_PSH


def coalesce(packets: list, limit: int = 65535) -> list[tuple[bytes, list]]:
    """Merge runs of consecutive, in-order segments of one TCP flow into super-packets.

    Returns ``(virtio_net_hdr, parts)`` per packet to write; ``parts`` concatenated is the IP
    packet (``os.writev`` takes them without copying).  A run ends at a segment of another flow,
    a sequence gap, a segment larger than the first, one after a shorter one (only the last may
    be short), a PSH (it must be the last), or ``limit`` bytes."""
    out: list[tuple[bytes, list]] = []
    run = None       # [first_pkt, flow, iph, hlen, next_seq, gso, total, parts, psh]
    for pkt in packets:
        k = tcp_gro_key(pkt)
        if run is not None and k is not None:
            flow, iph, hlen, seq, plen, psh = k
            if (flow == run[1] and seq == run[4] and plen <= run[5] and run[6] + plen <= limit):
                run[7].append(memoryview(pkt)[hlen:])
                run[4] = (seq + plen) & 0xFFFFFFFF
                run[6] += plen
                if psh or plen < run[5]:
                    run[8] = psh
                    out.append(_finish_run(run))
                    run = None
                continue
        if run is not None:
            out.append(_finish_run(run))
            run = None
        if k is None:
            out.append((PLAIN_HDR, [pkt]))
            continue
        flow, iph, hlen, seq, plen, psh = k
        if psh:
            out.append((PLAIN_HDR, [pkt]))
            continue
        run = [pkt, flow, iph, hlen, (seq + plen) & 0xFFFFFFFF, plen, len(pkt), [], 0]
    if run is not None:
        out.append(_finish_run(run))
    return out


def _finish_run(run) -> tuple[bytes, list]:
    first, _flow, iph, hlen, _next, gso, total, rest, psh = run
    if not rest:
        return PLAIN_HDR, [first]
    head = bytearray(first[:hlen])
    head[iph + 13] |= psh
    if iph == 20:
        _pack16(head, 2, total)
        head[10] = head[11] = 0
        _pack16(head, 10, checksum_field(int.from_bytes(head[:20], "big")))
        gso_type = GSO_TCPV4
    else:
        _pack16(head, 4, total - 40)
        gso_type = GSO_TCPV6
    # NEEDS_CSUM: the kernel finishes the checksum from the pseudo-header sum we leave in the field.
    _pack16(head, iph + 16, pseudo_header_sum(head, PROTO_TCP, total - iph) or 0xFFFF)
    hdr = VNET_HDR.pack(NEEDS_CSUM, gso_type, hlen, gso, iph, 16)
    return hdr, [head, memoryview(first)[hlen:], *rest]
