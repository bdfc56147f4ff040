"""The fast datapath's building blocks against slow, obviously-right references (no root needed):
checksums, TSO splitting, GRO coalescing and re-splitting, UDP GRO buffers, the --datapath
option; and the Datapath (the IO layer) over real loopback sockets."""

import os
import random
import struct

import pytest

from vpnedu.datapath import Options
from vpnedu.errors import VpneduError
from vpnedu.net import offload as off
from vpnedu.net import udp as _udp


# ---------------------------------------------------------------------- references
def rfc1071(data: bytes, initial: int = 0) -> int:
    """The folded one's-complement sum, word by word (RFC 1071), the slow way."""
    if len(data) % 2:
        data = data + b"\0"
    s = initial
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_checksum(data: bytes, initial: int = 0) -> int:
    return ~rfc1071(data, initial) & 0xFFFF


def ref_segments(packet: bytes, mss: int) -> list[bytes]:
    """What Linux's software GSO makes of a TCP super-packet, written out plainly."""
    v4 = packet[0] >> 4 == 4
    iph = (packet[0] & 15) * 4 if v4 else 40
    hlen = iph + (packet[iph + 12] >> 4) * 4
    payload = packet[hlen:]
    seq = int.from_bytes(packet[iph + 4:iph + 8], "big")
    flags = packet[iph + 13]
    ident = int.from_bytes(packet[4:6], "big")
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)] or [b""]
    out = []
    for i, chunk in enumerate(chunks):
        h = bytearray(packet[:hlen])
        last = i == len(chunks) - 1
        fl = flags
        if not last:
            fl &= ~(off.TCP_FIN | off.TCP_PSH)
        if i:
            fl &= ~off.TCP_CWR
        h[iph + 13] = fl
        h[iph + 4:iph + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
        n = hlen + len(chunk)
        if v4:
            h[2:4] = n.to_bytes(2, "big")
            h[4:6] = ((ident + i) & 0xFFFF).to_bytes(2, "big")
            h[10:12] = b"\0\0"
            h[10:12] = ref_checksum(bytes(h[:iph])).to_bytes(2, "big")
            pseudo = bytes(h[12:20]) + bytes([0, 6]) + (n - iph).to_bytes(2, "big")
        else:
            h[4:6] = (n - 40).to_bytes(2, "big")
            pseudo = bytes(h[8:40]) + (n - iph).to_bytes(4, "big") + bytes([0, 0, 0, 6])
        h[iph + 16:iph + 18] = b"\0\0"
        seg = bytes(h) + chunk
        h[iph + 16:iph + 18] = ref_checksum(pseudo + seg[iph:]).to_bytes(2, "big")
        out.append(bytes(h) + chunk)
    return out


def make_tcp(payload: bytes, *, v6=False, seq=1000, flags=off.TCP_ACK | off.TCP_PSH, ident=4242,
             options=b"\x01\x01\x08\x0a" + bytes(range(8)), src=b"\x0a\x00\x00\x02", dst=b"\x0a\x00\x00\x01",
             ack=77, window=502, tos=0, ttl=64, partial=False) -> bytes:
    """An IPv4/IPv6 TCP packet with valid checksums (or, ``partial``: the pseudo-header sum in the
    checksum field, as the kernel hands over a NEEDS_CSUM packet)."""
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq & 0xFFFFFFFF, ack, (20 + len(options)) // 4 << 4,
                                flags, window, 0, 0) + options)
    tl = len(tcp) + len(payload)
    if v6:
        src6, dst6 = b"\xfd" + bytes(13) + src[-2:], b"\xfd" + bytes(13) + dst[-2:]
        ip = bytearray(struct.pack("!IHBB", 0x60000000 | tos << 20, tl, 6, ttl) + src6 + dst6)
        pseudo = src6 + dst6 + tl.to_bytes(4, "big") + bytes([0, 0, 0, 6])
    else:
        ip = bytearray(struct.pack("!BBHHHBBH", 0x45, tos, 20 + tl, ident, 0x4000, ttl, 6, 0) + src + dst)
        ip[10:12] = ref_checksum(bytes(ip)).to_bytes(2, "big")
        pseudo = src + dst + bytes([0, 6]) + tl.to_bytes(2, "big")
    if partial:
        tcp[16:18] = rfc1071(pseudo).to_bytes(2, "big")
    else:
        tcp[16:18] = ref_checksum(pseudo + bytes(tcp) + payload).to_bytes(2, "big")
    return bytes(ip + tcp + payload)


def vnet_tso(packet: bytes, mss: int) -> bytes:
    v6 = packet[0] >> 4 == 6
    iph = 40 if v6 else 20
    hlen = iph + (packet[iph + 12] >> 4) * 4
    return off.VNET_HDR.pack(off.NEEDS_CSUM, off.GSO_TCPV6 if v6 else off.GSO_TCPV4, hlen, mss, iph, 16) + packet


# ---------------------------------------------------------------------- checksums
@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 51, 1400, 1401, 65535])
def test_checksum_matches_rfc1071(n):
    rng = random.Random(n)
    data = bytes(rng.randrange(256) for _ in range(n))
    assert off.internet_checksum(data) == ref_checksum(data) or (ref_checksum(data) == 0xFFFF
                                                                 and off.internet_checksum(data) == 0)
    assert off.ones_sum(data) % 0xFFFF == rfc1071(data) % 0xFFFF


def test_checksum_corner_cases():
    assert off.internet_checksum(b"") == 0xFFFF or off.internet_checksum(b"") == 0
    assert off.internet_checksum(b"\xff\xff" * 10) in (0, 0xFFFF)
    # An IPv4 header with a valid checksum sums to zero.
    pkt = make_tcp(b"hello")
    assert off.ones_sum(pkt[:20]) == 0
    assert off.verify_transport_checksum(pkt)
    bad = bytearray(pkt)
    bad[-1] ^= 1
    assert not off.verify_transport_checksum(bytes(bad))


def test_finish_checksum_of_a_partial_packet():
    for v6 in (False, True):
        full = make_tcp(os.urandom(333), v6=v6)
        partial = bytearray(make_tcp(full[-333:], v6=v6, partial=True))
        iph = 40 if v6 else 20
        off.finish_checksum(partial, iph, 16)
        assert bytes(partial) == full


# ---------------------------------------------------------------------- TSO split
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("size,mss", [(1, 1368), (1368, 1368), (1369, 1368), (64000, 1368), (65000 - 52, 1368),
                                      (5000, 536), (4097, 1000)])
def test_split_tso_equals_kernel_segmentation(v6, size, mss):
    rng = random.Random(size * 7 + mss)
    payload = bytes(rng.randrange(256) for _ in range(size))
    if v6 and size > 65000 - 72:
        payload = payload[:65000 - 72]
    for flags in (off.TCP_ACK, off.TCP_ACK | off.TCP_PSH, off.TCP_ACK | off.TCP_FIN | off.TCP_PSH | off.TCP_CWR):
        whole = make_tcp(payload, v6=v6, flags=flags, seq=0xFFFFF000, ident=0xFFFE)
        partial = make_tcp(payload, v6=v6, flags=flags, seq=0xFFFFF000, ident=0xFFFE, partial=True)
        got = off.packets_from_tun(vnet_tso(partial, mss), mtu=1420)
        want = ref_segments(whole, min(mss, 1420 - (72 if v6 else 52)))   # never past the MTU
        assert [bytes(g) for g in got] == want
        for g in got:
            assert len(g) <= 1420
            assert off.verify_transport_checksum(g)


@pytest.mark.parametrize("v6", [False, True])
def test_vectorised_split_equals_the_python_loop(v6):
    """split_tso (numpy, all segments at once) gives byte for byte what split_tso_python (one
    segment at a time) gives: odd sizes and MSS, every flag combination, IPv4 options, a
    wrapping sequence number and IPv4 ID, a header-only super-packet."""
    rng = random.Random(7 + v6)
    for size, mss, opts in [(0, 1368, 12), (1, 1368, 12), (1367, 1368, 12), (1368 * 5 + 1, 1368, 12),
                            (9999, 777, 0), (3000, 1001, 40), (64000, 1368, 12), (2000, 1460, 12)]:
        payload = bytes(rng.randrange(256) for _ in range(size))
        options = bytes([1] * opts)
        for flags in (off.TCP_ACK, off.TCP_ACK | off.TCP_PSH | off.TCP_FIN | off.TCP_CWR | 0x40):
            pkt = make_tcp(payload, v6=v6, flags=flags, seq=0xFFFFFFFF - 5, ident=0xFFFF, options=options,
                           partial=True)
            iph = 40 if v6 else 20
            gt = off.GSO_TCPV6 if v6 else off.GSO_TCPV4
            want = off.split_tso_python(pkt, gt | off.GSO_ECN, mss, iph, 1420)
            got = off.split_tso(memoryview(pkt), gt | off.GSO_ECN, mss, iph, 1420)
            assert [bytes(g) for g in got] == want
            assert all(off.verify_transport_checksum(bytes(g)) for g in got)


def test_split_tso_never_exceeds_the_mtu():
    payload = os.urandom(10000)
    partial = make_tcp(payload, partial=True)
    got = off.packets_from_tun(vnet_tso(partial, 1460), mtu=1420)   # an MSS too big for our MTU
    assert max(len(g) for g in got) <= 1420
    assert b"".join(g[52:] for g in got) == payload
    assert all(off.verify_transport_checksum(g) for g in got)


def test_split_tso_rejects_nonsense():
    with pytest.raises(off.OffloadError):
        off.split_tso(make_tcp(b"x" * 100), off.GSO_UDP_L4, 50, 20, 1420)
    with pytest.raises(off.OffloadError):
        off.split_tso(make_tcp(b"x" * 100), off.GSO_TCPV6, 50, 20, 1420)
    with pytest.raises(off.OffloadError):
        off.split_tso(b"\x45" + bytes(10), off.GSO_TCPV4, 50, 20, 1420)
    with pytest.raises(off.OffloadError):
        off.packets_from_tun(b"\x00" * 5, 1420)


def test_plain_reads_pass_through():
    pkt = make_tcp(b"abc")
    assert off.packets_from_tun(off.PLAIN_HDR + pkt, 1420) == [pkt]
    partial = make_tcp(b"abc", partial=True)
    hdr = off.VNET_HDR.pack(off.NEEDS_CSUM, off.GSO_NONE, 52, 0, 20, 16)
    assert [bytes(p) for p in off.packets_from_tun(hdr + partial, 1420)] == [pkt]


# ---------------------------------------------------------------------- GRO coalescing
def resplit(hdr: bytes, parts: list) -> list[bytes]:
    """What the kernel does with a coalesced write: split it again (via our own TSO split,
    which the tests above tie to the kernel's segmentation)."""
    data = b"".join(bytes(p) for p in parts)
    flags, gso_type, hdr_len, gso_size, cs, co = off.VNET_HDR.unpack(hdr)
    if gso_type == off.GSO_NONE:
        return [data]
    assert flags == off.NEEDS_CSUM and co == 16 and hdr_len <= len(data)
    # The checksum field holds the pseudo-header sum for the whole super-packet.
    v4 = data[0] >> 4 == 4
    assert int.from_bytes(data[cs + 16:cs + 18], "big") % 0xFFFF == off.pseudo_header_sum(
        data, 6, len(data) - cs) % 0xFFFF
    if v4:
        assert off.ones_sum(data[:20]) == 0 and int.from_bytes(data[2:4], "big") == len(data)
    return [bytes(s) for s in off.split_tso(data, gso_type, gso_size, cs, 65535)]


def stream(n, mss=1368, v6=False, seq=5000, **kw):
    return [make_tcp(bytes([i % 256]) * mss, v6=v6, seq=seq + i * mss, ident=100 + i, flags=off.TCP_ACK, **kw)
            for i in range(n)]


@pytest.mark.parametrize("v6", [False, True])
def test_coalesce_then_resplit_round_trips(v6):
    segs = stream(40, v6=v6)
    segs[-1] = make_tcp(b"z" * 100, v6=v6, seq=5000 + 39 * 1368, ident=139, flags=off.TCP_ACK | off.TCP_PSH)
    out = off.coalesce(segs)
    assert len(out) == 1
    assert out[0][0] != off.PLAIN_HDR
    again = resplit(*out[0])
    # Same payloads, sequence numbers, flags; IPv4 IDs are renumbered, as GRO+GSO does.
    assert len(again) == len(segs)
    for a, b in zip(again, segs):
        iph = 40 if v6 else 20
        assert a[iph:iph + 16] == b[iph:iph + 16] and a[iph + 18:] == b[iph + 18:]
        assert off.verify_transport_checksum(a)


def test_coalesce_respects_flow_boundaries_and_order():
    a = stream(5)
    b = stream(5, seq=90000, src=b"\x0a\x00\x00\x03")
    gap = stream(3, seq=5000 + 6 * 1368)           # a hole after a[4]
    small = [make_tcp(b"s" * 10, seq=5000 + 9 * 1368, flags=off.TCP_ACK)]
    ack_only = [make_tcp(b"", seq=1, flags=off.TCP_ACK)]
    syn = [make_tcp(b"", seq=1, flags=0x02)]
    other_ack = stream(2, seq=5000 + 5 * 1368, ack=78)
    pkts = a + b + gap + small + ack_only + syn + other_ack
    out = off.coalesce(pkts)
    flat = [p for hdr, parts in out for p in resplit(hdr, parts)]
    # Nothing lost, nothing reordered (payload and sequence numbers in the original order).
    assert [(p[24:28], p[52:]) for p in flat] == [(p[24:28], p[52:]) for p in pkts]
    sizes = [len(parts) - 1 if hdr != off.PLAIN_HDR else 1 for hdr, parts in out]
    assert sizes == [5, 5, 3 + 1, 1, 1, 2]


def test_coalesce_never_merges_differing_headers():
    base = stream(2)
    for change in (dict(ttl=63), dict(tos=4), dict(window=100), dict(options=b"\x01\x01\x08\x0a" + bytes(8))):
        second = make_tcp(bytes([1]) * 1368, seq=5000 + 1368, ident=101, flags=off.TCP_ACK, **change)
        out = off.coalesce([base[0], second])
        assert len(out) == 2, change
    # A bigger segment after a smaller one, and anything after a PSH, start a new packet.
    first = make_tcp(b"a" * 1000, seq=5000, flags=off.TCP_ACK)
    bigger = make_tcp(b"b" * 1368, seq=6000, flags=off.TCP_ACK)
    assert len(off.coalesce([first, bigger])) == 2
    psh = make_tcp(b"a" * 1368, seq=5000, flags=off.TCP_ACK | off.TCP_PSH)
    after = make_tcp(b"b" * 1368, seq=5000 + 1368, flags=off.TCP_ACK)
    assert len(off.coalesce([psh, after])) == 2


def test_coalesce_limit():
    segs = stream(60)
    out = off.coalesce(segs)
    for hdr, parts in out:
        assert sum(len(p) for p in parts) <= 65535
    assert sum(len(resplit(h, p)) for h, p in out) == 60


# ---------------------------------------------------------------------- UDP GRO buffers
def test_split_gro_buffers():
    buf = bytearray(b"A" * 100 + b"B" * 100 + b"C" * 42 + b"junk")
    parts = _udp.split_gro(buf, 242, 100)
    assert [bytes(p) for p in parts] == [b"A" * 100, b"B" * 100, b"C" * 42]
    assert _udp.gro_segment_size([], 242) == 242
    assert _udp.gro_segment_size([(_udp.SOL_UDP, _udp.UDP_GRO, struct.pack("=i", 100))], 242) == 100


# ---------------------------------------------------------------------- options
def test_datapath_options():
    simple = Options.parse("simple")
    assert not (simple.tso or simple.udp_gso or simple.udp_gro or simple.tun_gro) and simple.describe() == "simple"
    o = Options.parse("fast")
    assert o.tso and o.udp_gso and o.udp_gro and o.tun_gro and o.vnet_hdr and o.tso_max == 65536
    assert o.describe() == "fast" and Options.parse("fast,tso").describe() == "fast"
    assert Options.parse("fast,tso-max=32768").describe() == "fast,tso-max=32768"
    o = Options.parse("fast,no-tso,no-tun-gro,batch=8")
    assert not o.tso and not o.tun_gro and not o.vnet_hdr and o.udp_gso and o.batch == 8
    assert o.describe() == "fast,no-tso,no-tun-gro,batch=8"
    for bad in ("turbo", "fast,no-warp", "fast,batch=x", "simple,no-tso"):
        with pytest.raises(VpneduError):
            Options.parse(bad)


# ---------------------------------------------------------------------- the Datapath over real sockets
import socket  # noqa: E402

from vpnedu.protocol.transport import HEADER  # noqa: E402
from vpnedu.sim import make_pair  # noqa: E402
from vpnedu.testing import LoopbackNode  # noqa: E402


def _drain(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("spec", ["fast", "fast,no-udp-gso,no-udp-gro,no-tun-gro", "simple"])
def test_datapath_sends_what_the_device_seals(spec):
    """Packets read from TUN leave the socket as exactly the transport messages the protocol
    defines (header, counter, padded packet, tag), in as few sendmsg calls as GSO allows."""
    pair = make_pair()
    pair.handshake()
    node = LoopbackNode(pair.client, Options.parse(spec), clock=lambda: pair.now)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    try:
        peer = pair.server_peer   # the client's view of the server
        peer.endpoint = rx.getsockname()
        kp = peer.current
        c0, tx0 = kp.send_counter, peer.tx_bytes
        packets = stream(10) + [make_tcp(b"tail" * 3)]
        for p in packets:
            node.tun.inject(p)
        node.datapath.on_tun_readable()
        got = _drain(rx)
        want = []
        for i, p in enumerate(packets):
            pad = (-len(p)) % 16 if len(p) < 1420 else 0
            want.append(HEADER.pack(4, kp.remote_index, c0 + i) + kp.sender.seal(c0 + i, p + bytes(pad)))
        assert got == want           # byte for byte the transport messages of the protocol
        assert [d for d, _ in node.sent] == want
        assert kp.send_counter == c0 + len(packets)
        assert peer.tx_bytes - tx0 == sum(map(len, want)) and peer.t_new_handshake is not None
        assert (node.datapath.stats["gso_sends"] > 0) == node.datapath.gso
        # The server takes them all.
        for d in got:
            r = pair.server.receive(d, pair.client_ep, pair.now)
            assert [p for _, p in r.packets] == [packets[got.index(d)]], dict(pair.server.counters)
    finally:
        rx.close()
        node.close()


@pytest.mark.parametrize("spec", ["fast", "fast,no-udp-gro,no-tun-gro", "simple"])
def test_datapath_receives_what_the_device_opens_and_counts_drops(spec):
    pair = make_pair()
    pair.handshake()
    pair.client_sends(make_tcp(b"confirm"))   # the responder's session is confirmed
    node = LoopbackNode(pair.server, Options.parse(spec), clock=lambda: pair.now)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    try:
        peer = pair.client_peer   # the server's view of the client
        packets = stream(12) + [make_tcp(b"x" * 100, seq=5000 + 12 * 1368, flags=off.TCP_ACK)]
        datagrams = [d for p in packets for d, _ in pair.client.send(pair.server_peer, p, pair.now)]
        rx0, n0 = peer.rx_bytes, peer.rx_packets
        for d in datagrams:
            tx.sendto(d, node.sock.getsockname())
        tx.sendto(datagrams[3], node.sock.getsockname())           # a replay
        bad = bytearray(datagrams[-1])
        bad[40] ^= 0x80
        forged = list(pair.client.send(pair.server_peer, make_tcp(b"y"), pair.now))[0][0]
        tx.sendto(bytes(bad[:16]) + bytes(bad[16:]), node.sock.getsockname())   # tampered copy of a replay
        bad2 = bytearray(forged)
        bad2[-1] ^= 1
        tx.sendto(bytes(bad2), node.sock.getsockname())              # tampered, fresh counter
        node.datapath.on_udp_readable()
        written = node.tun.written()
        if node.tun.vnet_hdr:
            flat = [p for w in written for p in resplit(w[:10], [w[10:]])]
        else:
            flat = written
        want = packets
        if node.tun.vnet_hdr:   # IPv4 IDs are renumbered by GRO + re-splitting; compare the rest
            assert [p[20:] for p in flat] == [p[20:] for p in want]
            assert (len(written) < len(packets)) == node.datapath.opts.tun_gro     # coalesced
        else:
            assert flat == want
        c = pair.server.counters
        # The tampered copy of an old message is dropped as a replay before decryption.
        assert c["dropped.replay"] == 2 and c["dropped.bad-mac"] == 1, dict(c)
        assert peer.rx_packets - n0 == len(datagrams)
        assert peer.rx_bytes - rx0 == sum(map(len, datagrams))
        assert peer.endpoint == tx.getsockname()     # roaming follows authenticated packets
        assert node.sent == []                       # nothing forged earned a reply
    finally:
        tx.close()
        node.close()


def test_per_packet_events_come_from_the_one_path():
    """Someone subscribes to the per-packet events: the same datapath emits them, one per packet,
    and still moves the packets."""
    from vpnedu.events import EventLog
    pair = make_pair()
    pair.handshake()
    client = LoopbackNode(pair.client, Options.parse("fast"), clock=lambda: pair.now)
    server = LoopbackNode(pair.server, Options.parse("fast"), clock=lambda: pair.now)
    try:
        pair.server_peer.endpoint = server.sock.getsockname()
        log = EventLog(pair.events, kinds=["tun.read", "data.encrypted", "udp.sent", "udp.received",
                                           "data.decrypted", "tun.write"])
        packets = stream(5)
        for p in packets:
            client.tun.inject(p)
        client.datapath.on_tun_readable()
        server.datapath.on_udp_readable()
        kinds = log.kinds()
        for kind in ("tun.read", "data.encrypted", "udp.sent", "udp.received", "data.decrypted", "tun.write"):
            assert kinds.count(kind) == 5, (kind, kinds)
        assert [bytes(w[10:])[20:] for w in server.tun.written()] != []
    finally:
        client.close()
        server.close()
