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

import numpy as _np

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


def _tso_layout(packet, gso_type: int, gso_size: int, csum_start: int, mtu: int) -> tuple[bool, int, int, int]:
    """What both splits check first: (IPv4?, IP header length, IP + TCP header length, MSS) of a
    super-packet, or :class:`OffloadError` saying why the kernel's description does not fit it."""
    gt = gso_type & ~GSO_ECN
    if gt not in (GSO_TCPV4, GSO_TCPV6):
        raise OffloadError(f"unsupported GSO type {gso_type}")
    total = len(packet)
    v4 = total > 0 and packet[0] >> 4 == 4
    if v4 != (gt == GSO_TCPV4) or (not v4 and (not total or packet[0] >> 4 != 6)):
        raise OffloadError("GSO type does not match the IP version")
    iph = csum_start
    if total < iph + 20 or iph < (20 if v4 else 40):
        raise OffloadError("super-packet shorter than its headers")
    hlen = iph + ((packet[iph + 12] >> 4) * 4)
    mss = min(gso_size, mtu - hlen)
    if mss <= 0 or hlen > total or hlen < iph + 20:
        raise OffloadError(f"bad segment size {gso_size} for headers of {hlen} bytes")
    return v4, iph, hlen, mss


#: What :func:`split_tso` needs per shape of super-packet (a bulk TCP stream has two or three).
_SHAPES: dict = {}


def _shape(nseg: int, mss: int, width: int, stride: int, last: int):
    """Per-shape constants, made once: row numbers, sequence-number offsets (uint32, so that
    adding the first sequence number wraps as TCP's does), and each segment's slice of the rows."""
    key = (nseg, mss, width, stride, last)
    got = _SHAPES.get(key)
    if got is None:
        if len(_SHAPES) > 256:
            _SHAPES.clear()
        seg = _np.arange(nseg, dtype=_np.int64)
        offsets = (seg * mss).astype(_np.uint32)
        slices = [slice(o, o + width) for o in range(0, (nseg - 1) * stride, stride)]
        o = (nseg - 1) * stride
        slices.append(slice(o, o + last))
        got = _SHAPES[key] = (seg, offsets, slices)
    return got


def split_tso(packet, gso_type: int, gso_size: int, csum_start: int, mtu: int) -> list:
    """Cut a TCP super-packet (without its virtio-net header) into segments of at most ``mtu``
    bytes, each a complete IP packet with valid IP and TCP checksums -- what the kernel would
    have sent had the TUN device not offered TSO.  Returns the segments as memoryviews (of one
    new buffer per super-packet).

    ``gso_size`` is the MSS the kernel chose; a segment never carries more, and never more than
    fits the MTU.  IPv4 IDs count up from the super-packet's, as Linux's GSO does; FIN and PSH
    stay on the last segment, CWR on the first.

    All segments are built at once, as the rows of one numpy array: one header (already holding
    a full segment's lengths and zeroed checksums) copied into every row by broadcasting, the
    payload by one reshape, then only the fields that differ are written column by column (the
    TCP sequence number as one big-endian 32-bit column; the IPv4 ID, and with it the header
    checksum, counts up from a sum taken once in Python).  The TCP checksums are one row sum.
    About fifteen numpy calls per super-packet, whatever its size, instead of a Python loop per
    segment (:func:`split_tso_python` is that loop, kept as the reference)."""
    v4, iph, hlen, mss = _tso_layout(packet, gso_type, gso_size, csum_start, mtu)
    if iph & 3:   # no IP header is that long (IPv4's are 4 * IHL, IPv6 extension headers 8 * n)
        return split_tso_python(packet, gso_type, gso_size, csum_start, mtu)
    total = len(packet)
    plen = total - hlen
    full, rem = divmod(plen, mss)
    nseg = full + (1 if rem or not full else 0)
    width = hlen + mss
    last = hlen + rem if nseg > full else width
    stride = (width + 3) & ~3             # every row whole 32-bit words (see the TCP sum below)
    seg, offsets, slices = _shape(nseg, mss, width, stride, last)
    # The header every segment starts from: lengths of a full segment, checksums zero.
    head = bytearray(packet[:hlen])
    flags = head[iph + 13]
    seq0 = int.from_bytes(head[iph + 4:iph + 8], "big")
    head[iph + 16] = head[iph + 17] = 0
    if v4:
        ip_id = (head[4] << 8) | head[5]
        head[2:4] = width.to_bytes(2, "big")
        head[4:6] = bytes(2)
        head[10:12] = bytes(2)
    else:
        head[4:6] = (width - 40).to_bytes(2, "big")
    src = _np.frombuffer(packet, _np.uint8)
    rows = _np.empty((nseg, stride), _np.uint8)
    rows[:, :hlen] = _np.frombuffer(head, _np.uint8)
    if full:
        rows[:full, hlen:width] = src[hlen:hlen + full * mss].reshape(full, mss)
    if stride > width:
        rows[:, width:] = 0
    if nseg > full:
        rows[full, hlen:hlen + rem] = src[hlen + full * mss:]
        rows[full, hlen + rem:] = 0
    # Sequence numbers: one column of big-endian 32-bit words, wrapping as uint32 does.
    rows.view(">u4")[:, (iph + 4) >> 2] = offsets + _np.uint32(seq0)
    # FIN and PSH only on the last segment, CWR only on the first.
    if flags & (TCP_FIN | TCP_PSH | TCP_CWR):
        col = rows[:, iph + 13]
        col[:] = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
        col[0] |= flags & TCP_CWR
        col[-1] |= flags & (TCP_FIN | TCP_PSH)
    words = rows.view(">u2")
    if v4:
        # IDs count up; so the header checksum counts down: sum = constant part + ID.
        ids = (seg + ip_id) & 0xFFFF
        words[:, 2] = ids
        s = (ids + ones_sum(head[:iph])) % 0xFFFF
        if last != width:
            words[-1, 1] = last
            s[-1] = (s[-1] + last - width) % 0xFFFF
        words[:, 5] = (0xFFFF - s) % 0xFFFF
        pseudo = ones_sum(head[12:20]) + PROTO_TCP
    else:
        if last != width:
            words[-1, 2] = last - 40
        pseudo = ones_sum(head[8:40]) + PROTO_TCP
    # The TCP part summed as native little-endian 32-bit words (a third of the time of 16-bit
    # big-endian ones): 2**16 = 1 (mod 0xFFFF), so that is the sum of little-endian 16-bit
    # words, and a byte swap is a multiplication by 2**8 (mod 0xFFFF).
    le = rows.view("<u4")[:, iph >> 2:].sum(axis=1, dtype=_np.uint64)
    le <<= _np.uint64(8)
    le += _np.uint64(pseudo + width - iph)
    if last != width:   # the last segment is shorter: + (0xFFFF - d) is - d (mod 0xFFFF), never below 0
        le[-1] += _np.uint64(0xFFFF - (width - last))
    le %= _np.uint64(0xFFFF)
    words[:, (iph >> 1) + 8] = (_np.uint64(0xFFFF) - le) % _np.uint64(0xFFFF)
    return list(map(memoryview(rows).cast("B").__getitem__, slices))


def split_tso_python(packet, gso_type: int, gso_size: int, csum_start: int, mtu: int) -> list[bytes]:
    """The same segments as :func:`split_tso`, one at a time in Python (the reference the
    vectorised version is tested against, and what it did before).

    Per segment only four fields change (IPv4 ID and header checksum, TCP sequence number and
    checksum; the length and flags of the first and last), so both checksums are computed as
    "sum of the constant parts" + "sum of what changed" + "sum of the payload", and the header
    is packed with one ``struct`` call."""
    if not isinstance(packet, bytes):
        packet = bytes(packet)
    v4, iph, hlen, mss = _tso_layout(packet, gso_type, gso_size, csum_start, mtu)
    total = len(packet)
    head = bytearray(packet[:hlen])
    flags = head[iph + 13]
    seq0 = int.from_bytes(head[iph + 4:iph + 8], "big")
    # Zero every field that varies, and sum what stays: the constant parts of each checksum.
    head[iph + 4:iph + 8] = bytes(4)     # sequence number
    head[iph + 13] = 0                   # flags (the low byte of a 16-bit word)
    head[iph + 16:iph + 18] = bytes(2)   # TCP checksum
    if v4:
        ip_id = (head[4] << 8) | head[5]
        head[2:6] = bytes(4)             # total length, ID
        head[10:12] = bytes(2)           # header checksum
        ip_sum = int.from_bytes(head[:iph], "big") % 0xFFFF
        addrs = head[12:20]
        layout = struct.Struct(f"!2sHH4sH{iph - 12}s4sI5sB2sH{hlen - iph - 18}s")
        c0, c1, c2 = bytes(head[0:2]), bytes(head[6:10]), bytes(head[12:iph])
    else:
        head[4:6] = bytes(2)             # payload length
        addrs = head[8:40]
        layout = struct.Struct(f"!4sH{iph - 6}s4sI5sB2sH{hlen - iph - 18}s")
        c0, c1 = bytes(head[0:4]), bytes(head[6:iph])
    t0, t1, t2, t3 = (bytes(head[iph:iph + 4]), bytes(head[iph + 8:iph + 13]),
                      bytes(head[iph + 14:iph + 16]), bytes(head[iph + 18:hlen]))
    tcp_sum = (int.from_bytes(addrs, "big") + PROTO_TCP + int.from_bytes(head[iph:hlen], "big")) % 0xFFFF
    pack = layout.pack
    first_flags = flags & ~(TCP_FIN | TCP_PSH)
    mid_flags = flags & ~(TCP_FIN | TCP_PSH | TCP_CWR)
    last_flags = flags & ~TCP_CWR
    from_bytes = int.from_bytes
    out = []
    pos = hlen
    i = 0
    while True:
        end = pos + mss
        if end >= total:
            end = total
            fl = flags if i == 0 else last_flags
        else:
            fl = first_flags if i == 0 else mid_flags
        payload = packet[pos:end]
        n = hlen + end - pos
        seq = (seq0 + pos - hlen) & 0xFFFFFFFF
        # The payload's sum via its little-endian value: (x % 0xFFFF) * 256 is its big-endian sum.
        s = (tcp_sum + n - iph + (seq >> 16) + (seq & 0xFFFF) + fl
             + ((from_bytes(payload, "little") % 0xFFFF) << 8)) % 0xFFFF
        tcp_check = (0xFFFF - s) % 0xFFFF
        if v4:
            ident = (ip_id + i) & 0xFFFF
            ip_check = (0xFFFF - (ip_sum + n + ident) % 0xFFFF) % 0xFFFF
            out.append(pack(c0, n, ident, c1, ip_check, c2, t0, seq, t1, fl, t2, tcp_check, t3) + payload)
        else:
            out.append(pack(c0, n - 40, c1, t0, seq, t1, fl, t2, tcp_check, t3) + payload)
        pos = end
        i += 1
        if pos >= total:
            return out


def packets_from_tun(raw, mtu: int) -> list:
    """What one read from a TUN device with a virtio-net header holds, as plain IP packets with
    valid checksums (what :class:`vpnedu.datapath.Datapath` does with every read)."""
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
#: The fixed headers of an IPv4 (no options) + TCP segment, and of IPv6 + TCP, as the fields
#: that must be equal for two segments to merge: (version/TOS, DF+TTL+protocol, addresses+ports,
#: sequence number, ack number+data offset, flags, window).  ID, lengths and checksums may differ.
_GRO4 = struct.Struct("!2s4x4s2x12sI5sB2s2x")
_GRO6 = struct.Struct("!4s2x2s36sI5sB2s2x")
_ACK_PSH = TCP_ACK | TCP_PSH


def coalesce(packets: list, limit: int = 65535) -> list[tuple[bytes, list]]:
    """Merge runs of consecutive, in-order segments of one TCP flow into super-packets.

    Returns ``(virtio_net_hdr, parts)`` per packet to write; ``parts`` concatenated is the IP
    packet (``os.writev`` takes them without copying).  Packets (bytes or bytearrays) keep their
    order.  Like Linux GRO, a run holds segments with equal addresses, ports, ack number, window,
    TOS/TTL/DF (IPv4) or traffic class/hop limit (IPv6) and TCP options, only ACK (and PSH on the
    last) set, consecutive sequence numbers and a payload no larger than the first one's; it ends
    after a shorter segment or a PSH, or at ``limit`` bytes.  IPv4 with options or fragments and
    IPv6 with extension headers are written as they are."""
    out: list[tuple[bytes, list]] = []
    append = out.append
    parts = None     # the run: parts[0] is its first packet, then the payloads of the others
    r_iph = r_hlen = r_gso = r_total = r_next = 0
    r_a = r_b = r_c = r_d = r_w = r_opts = None
    for p in packets:
        n = len(p)
        b0 = p[0] if n else 0
        if b0 == 0x45 and n > 40 and p[9] == PROTO_TCP and not (p[6] & 0x3F) and not p[7]:
            iph = 20
            a, b, c, seq, d, fl, w = _GRO4.unpack_from(p)
        elif b0 >> 4 == 6 and n > 60 and p[6] == PROTO_TCP:
            iph = 40
            a, b, c, seq, d, fl, w = _GRO6.unpack_from(p)
        else:
            iph = 0
        if iph:
            hlen = iph + ((d[4] >> 4) * 4)
            plen = n - hlen
            if plen <= 0 or hlen < iph + 20 or (fl != TCP_ACK and fl != _ACK_PSH):
                iph = 0
        if parts is not None:
            if (iph == r_iph and seq == r_next and hlen == r_hlen and plen <= r_gso and r_total + plen <= limit
                    and c == r_c and d == r_d and w == r_w and a == r_a and b == r_b
                    and (hlen == iph + 20 or p[iph + 20:hlen] == r_opts)):
                parts.append(memoryview(p)[hlen:])
                r_total += plen
                r_next = (seq + plen) & 0xFFFFFFFF
                if fl == _ACK_PSH or plen < r_gso:   # nothing may follow a PSH or a short segment
                    append(_finish_run(parts, r_iph, r_hlen, r_gso, r_total, fl & TCP_PSH))
                    parts = None
                continue
            append(_finish_run(parts, r_iph, r_hlen, r_gso, r_total, 0))
            parts = None
        if not iph or fl == _ACK_PSH:
            append((PLAIN_HDR, [p]))
            continue
        parts = [p]
        r_iph, r_hlen, r_gso, r_total, r_next = iph, hlen, plen, n, (seq + plen) & 0xFFFFFFFF
        r_a, r_b, r_c, r_d, r_w = a, b, c, d, w
        r_opts = p[iph + 20:hlen]
    if parts is not None:
        append(_finish_run(parts, r_iph, r_hlen, r_gso, r_total, 0))
    return out


def _finish_run(parts: list, iph: int, hlen: int, gso: int, total: int, psh: int) -> tuple[bytes, list]:
    """The virtio-net header and pieces of one coalesced run (see :func:`coalesce`)."""
    first = parts[0]
    if len(parts) == 1:
        return PLAIN_HDR, parts
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
    parts[0] = memoryview(first)[hlen:]
    return VNET_HDR.pack(NEEDS_CSUM, gso_type, hlen, gso, iph, 16), [head, *parts]
