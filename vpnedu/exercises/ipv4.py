"""Exercise: parse an IPv4 header (RFC 791) from packets read off the TUN device.

A TUN device hands the VPN whole IP packets, and the VPN needs a few header
fields from each: the destination (which peer's AllowedIPs hold it), the source
(is a decrypted packet from an address that peer may use?) and the total length
(the sender pads every packet to a multiple of 16 bytes before encrypting; the
receiver cuts the padding off with the length from the header).

The student writes ``parse_ipv4(packet) -> dict``.  The check decodes the real
packets a running (simulated) VPN client read off its TUN device and the
packets the server wrote to its own, then hidden packets -- options (IHL > 5),
fragments, padding after the packet, malformed lengths -- and compares every
field with :class:`vpnedu.packet.ip.IPv4Packet`; for a malformed packet both
must raise :class:`vpnedu.errors.MessageError` (the VPN turns that into a
dropped packet, never a crash).
"""

from __future__ import annotations

import ipaddress
import random
import shutil
import struct

from ..errors import MessageError
from ..packet import ip as _ip
from .checking import Case, CaseFailed, describe_exception, expect

TITLE = "IPv4 header parser"
PARTS = ("parse",)
FIELDS = ("version", "header_length", "total_length", "ident", "dont_fragment", "more_fragments",
          "fragment_offset", "ttl", "protocol", "src", "dst", "payload")


def reference(packet: bytes) -> dict:
    """The expected dict: vpnedu's own parser for what it decodes, the flags word for the rest."""
    p = _ip.IPv4Packet.parse(packet)
    flags_frag = struct.unpack_from("!H", packet, 6)[0]
    return {"version": 4, "header_length": p.header_length, "total_length": p.total_length,
            "ident": p.ident, "dont_fragment": bool(flags_frag & 0x4000),
            "more_fragments": bool(flags_frag & 0x2000), "fragment_offset": (flags_frag & 0x1FFF) * 8,
            "ttl": p.ttl, "protocol": p.protocol, "src": str(p.src), "dst": str(p.dst),
            "payload": p.payload}


def craft(*, src="10.0.0.2", dst="192.0.2.80", protocol=_ip.PROTO_UDP, payload=b"data", ttl=64, ident=0,
          options=b"", df=False, mf=False, offset=0, tos=0, total=None, version=4, ihl=None) -> bytes:
    """Any IPv4 packet, including the malformed ones (``total``/``ihl``/``version`` can lie)."""
    ihl = ihl if ihl is not None else 5 + len(options) // 4
    length = total if total is not None else 20 + len(options) + len(payload)
    flags = (0x4000 if df else 0) | (0x2000 if mf else 0) | (offset // 8)
    header = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, tos, length, ident, flags, ttl, protocol, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + options
    header = header[:10] + struct.pack("!H", _ip.checksum(header)) + header[12:]
    return header + payload


def _compare(parse, packet: bytes, what: str) -> None:
    want = reference(packet)
    got = parse(packet)
    expect(isinstance(got, dict), f"{what}: parse_ipv4 returned {type(got).__name__}, expected a dict")
    missing = [k for k in FIELDS if k not in got]
    expect(not missing, f"{what}: the dict lacks {', '.join(missing)}")
    for k in FIELDS:
        g = got[k]
        if k in ("src", "dst"):
            g = str(g)
        if k == "payload" and isinstance(g, (bytearray, memoryview)):
            g = bytes(g)
        if g != want[k]:
            hint = {
                "header_length": "IHL counts 32-bit words: bytes = (first byte & 0x0F) * 4",
                "payload": "the payload starts after the options (at header_length) and ends at "
                           "total_length, not at the end of the bytes: the tunnel pads packets",
                "fragment_offset": "the low 13 bits of bytes 6-7 count 8-byte units",
                "dont_fragment": "flags are the top 3 bits of bytes 6-7: 0x4000 is DF, 0x2000 is MF",
                "more_fragments": "flags are the top 3 bits of bytes 6-7: 0x4000 is DF, 0x2000 is MF",
                "src": "the source address is bytes 12-15; ipaddress.IPv4Address(b) makes it readable",
                "dst": "the destination address is bytes 16-19",
                "total_length": "total length is bytes 2-3, big-endian (network byte order)",
                "ident": "identification is bytes 4-5, big-endian",
            }.get(k)
            raise CaseFailed(f"{what}: {k} is {g!r}, expected {want[k]!r}", hint)


def _must_raise(parse, packet: bytes, what: str) -> None:
    try:
        got = parse(packet)
    except MessageError:
        return
    except NotImplementedError:
        raise
    except Exception as e:
        raise CaseFailed(f"{what}: {describe_exception(e)}, expected MessageError",
                         "check the lengths first and raise MessageError (from vpnedu.errors): the VPN "
                         "counts it as a dropped 'malformed' packet instead of crashing") from None
    raise CaseFailed(f"{what}: returned {got!r:.80} instead of raising MessageError",
                     "RFC 791: IHL is at least 5 (20 bytes), total length at least IHL*4 and at most the "
                     "bytes you have; anything else is not a packet to trust")


def _ping(parse):
    _compare(parse, _ip.build_icmp_echo("10.0.0.2", "192.0.2.80", ident=7, seq=3), "an ICMP echo request")


def _running_vpn(parse):
    from ..course.simulated import SimLab
    from ..sim.topology import APP_ADDRESS, APP_UDP_PORT
    lab = SimLab()
    try:
        lab.start_server()
        lab.start_client()
        since = lab.last_hop()
        lab.ping("client", APP_ADDRESS, count=2)
        lab.udp("client", APP_ADDRESS, APP_UDP_PORT, b"hello from lab 1")
        hops = [h for h in lab.trace(since) if h.direction in ("tun->program", "program->tun")]
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)
    expect(len(hops) >= 6, "the simulated VPN moved too few packets (a bug in the lab, not in your code)")
    for h in hops:
        where = "read off" if h.direction == "tun->program" else "written to"
        _compare(parse, h.packet, f"a packet the {h.host} {where} its TUN device ({_ip.describe(h.packet)})")


def _options(parse):
    _compare(parse, craft(options=bytes([0x94, 0x04, 0, 0])), "a header with a 4-byte option (IHL 6)")
    _compare(parse, craft(options=bytes([1]) * 40, payload=b"x" * 9), "a header with 40 bytes of options (IHL 15)")


def _fragments(parse):
    _compare(parse, craft(mf=True, ident=0xBEEF, payload=b"A" * 64), "a first fragment (MF set)")
    _compare(parse, craft(offset=1480, ident=0xBEEF, payload=b"B" * 20), "a last fragment (offset 1480)")
    _compare(parse, craft(df=True, protocol=_ip.PROTO_TCP), "a packet with Don't Fragment set")


def _padding(parse):
    pkt = _ip.build_udp("10.0.0.2", 40000, "192.0.2.80", 8080, b"padded")
    _compare(parse, pkt + bytes(16 - len(pkt) % 16), "a packet followed by the tunnel's zero padding")


def _malformed(parse):
    good = _ip.build_icmp_echo("10.0.0.2", "10.0.0.1")
    for packet, what in ((b"", "an empty read"), (good[:19], "19 bytes (shorter than a header)"),
                         (bytes([0x60]) + good[1:], "an IPv6 packet (version 6)"),
                         (craft(ihl=4), "IHL 4 (a header shorter than 20 bytes)"),
                         (craft(total=19), "total length 19, less than the header"),
                         (craft(payload=b"abc", total=200), "total length 200 on a 27-byte packet"),
                         (craft(options=bytes(8), total=24), "total length shorter than header + options")):
        _must_raise(parse, packet, what)


def _hidden(parse):
    rng = random.Random(791)
    for i in range(300):
        opts = bytes(rng.randrange(256) for _ in range(4 * rng.randint(0, 10)))
        payload = bytes(rng.randrange(256) for _ in range(rng.randint(0, 120)))
        pkt = craft(src=str(ipaddress.IPv4Address(rng.getrandbits(32))),
                    dst=str(ipaddress.IPv4Address(rng.getrandbits(32))), protocol=rng.randrange(256),
                    payload=payload, ttl=rng.randrange(256), ident=rng.getrandbits(16), options=opts,
                    df=rng.random() < 0.5, mf=rng.random() < 0.3, offset=8 * rng.getrandbits(13),
                    tos=rng.randrange(256))
        pkt += bytes(rng.randint(0, 15))
        _compare(parse, pkt, f"hidden packet {i}")
    for i in range(300):
        junk = bytearray(rng.randbytes(rng.randint(0, 60)))
        if junk and rng.random() < 0.7:
            junk[0] = 0x40 | (junk[0] & 0x0F)
        junk = bytes(junk)
        try:
            _ip.IPv4Packet.parse(junk)
        except MessageError:
            _must_raise(parse, junk, f"hidden junk {i} ({junk[:8].hex()}...)")
        else:
            _compare(parse, junk, f"hidden junk {i} ({junk[:8].hex()}...)")


def cases() -> list[Case]:
    return [
        Case("an ICMP echo request", _ping, "fields are big-endian; struct.unpack('!BBHHHBBH4s4s', packet[:20])"),
        Case("packets read off the TUN devices of the running VPN", _running_vpn,
             "these are the pings and UDP packets of a real (simulated) VPN session"),
        Case("options (IHL > 5)", _options, "the header is IHL*4 bytes; options sit between byte 20 and there"),
        Case("fragments and flags", _fragments, "bytes 6-7: 3 flag bits, then a 13-bit offset in 8-byte units"),
        Case("padding after the packet is not payload", _padding,
             "the payload ends at total_length: WireGuard pads to 16 bytes before encrypting"),
        Case("malformed packets raise MessageError", _malformed,
             "raise MessageError before reading past the bytes you were given"),
        Case("hidden packets and junk", _hidden, "compare this packet with the rule for each field"),
    ]
