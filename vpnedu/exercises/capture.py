"""Exercise: choose a cipher suite, and show in a capture what each one hides.

A transport data message (WireGuard paper, section 5.4.6) is::

    type (1 byte) = 4 | reserved (3 bytes) | receiver index (4, little-endian) |
    counter (8, little-endian) | AEAD(key, counter, packet padded to 16 bytes, empty) -- data + 16-byte tag

Whatever the suite, the 16-byte header travels in the clear: who receives it
(the index), the counter and the size rounded up to 16 bytes.  ``wireguard``
(ChaCha20-Poly1305) and ``aes256gcm`` (AES-256-GCM) encrypt the packet;
``null-teaching`` only authenticates it, so the inner packet is right there
(:mod:`vpnedu.protocol.suites`).

The student writes ``dissect(datagram)`` (the header fields, as a capture tool
shows them) and ``inner_packet(datagram, suite)`` (the inner IP packet an
eavesdropper can read, without any key, or ``None``).  The check captures real
traffic between two devices on the simulated wire, once per suite, and compares
with :class:`vpnedu.protocol.messages.TransportData` and with the packets that
were really sent -- including padding, which must be cut off with the length
from the inner IP header (lab 1).
"""

from __future__ import annotations

import random
import warnings

from ..packet import ip as _ip
from ..protocol import messages as _msgs
from ..protocol.suites import SUITES, InsecureSuiteWarning
from .checking import Case, describe_exception, expect

TITLE = "what a capture shows"
PARTS = ("dissect", "inner")


def capture(suite: str, packets: list[bytes]):
    """Send ``packets`` from the client to the server under ``suite``; return the transport datagrams on the
    wire (keepalives and handshakes left out), in order, each with the packet inside it."""
    from ..sim import make_pair
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureSuiteWarning)
        pair = make_pair(suite, allow_insecure=SUITES[suite].insecure)
    pair.handshake()
    out = []
    for p in packets:
        mark = len(pair.net.capture)
        pair.client_sends(p)
        sent = [c.data for c in pair.net.capture[mark:] if c.source == pair.client_ep
                and c.data[0] == _msgs.TRANSPORT_DATA and len(c.data) > _msgs.TRANSPORT_MIN_SIZE]
        out.extend((d, p) for d in sent)
    return out


def _packets(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        size = rng.randint(0, 200)
        if rng.random() < 0.5:
            out.append(_ip.build_icmp_echo("10.0.0.2", "10.0.0.1", seq=i, payload=rng.randbytes(size)))
        else:
            out.append(_ip.build_udp("10.0.0.2", rng.randint(1024, 65535), "10.0.0.1", 53, rng.randbytes(size)))
    return out


def _dissect(dissect, suite: str):
    for d, _ in capture(suite, _packets(random.Random(1), 6)):
        want = _msgs.TransportData.from_bytes(d)
        got = dissect(d)
        expect(isinstance(got, dict), f"dissect returned {type(got).__name__}, expected a dict")
        for key, value in (("type", 4), ("receiver", want.receiver), ("counter", want.counter),
                           ("encrypted_length", len(want.encrypted_packet))):
            expect(got.get(key) == value, f"suite {suite}: dissect(...)[{key!r}] is {got.get(key)!r}, "
                   f"expected {value!r}", "type is byte 0; receiver bytes 4-7 and counter bytes 8-15 are "
                   "little-endian ('<I', '<Q'); encrypted_length is everything after the 16-byte header")


def _inner_clear(dissect, inner):
    for d, sent in capture("null-teaching", _packets(random.Random(2), 8)):
        got = inner(d, "null-teaching")
        expect(got is not None and bytes(got) == sent,
               "null-teaching: inner_packet gave " + ("None" if got is None else
                                                       f"{bytes(got)[:12].hex()}... ({len(got)} bytes)")
               + f", the client sent {sent[:12].hex()}... ({len(sent)} bytes)",
               "after the 16-byte header comes the packet, its padding to 16 bytes, then a 16-byte tag: "
               "drop the tag, then cut the padding with the IP header's total length")


def _inner_hidden(dissect, inner):
    for suite in ("wireguard", "aes256gcm"):
        for d, sent in capture(suite, _packets(random.Random(3), 8)):
            got = inner(d, suite)
            expect(got is None, f"suite {suite}: inner_packet returned bytes, but this suite encrypts: "
                   "an eavesdropper without the key reads nothing",
                   "only the null-teaching suite leaves the packet readable")


def _size_leak(dissect, inner):
    """The padded length is visible under every suite: sizes 1..16 look alike, 17 differs."""
    lengths = {}
    for payload in (0, 3, 12, 13, 40):
        pkt = _ip.build_udp("10.0.0.2", 4000, "10.0.0.1", 53, bytes(payload))
        (d, _), = capture("wireguard", [pkt])
        lengths[len(pkt)] = dissect(d)["encrypted_length"]
    for n, enc in lengths.items():
        expect(enc == -(-n // 16) * 16 + 16, f"a {n}-byte packet: dissect says {enc} encrypted bytes, "
               f"expected {-(-n // 16) * 16 + 16} (padded to 16, plus the tag)")


def _junk(dissect, inner):
    from ..errors import MessageError
    for bad in (b"", b"\x04\x00\x00\x00", _msgs.transport_header(1, 2) + bytes(8), b"\x01" + bytes(147)):
        try:
            dissect(bad)
        except MessageError:
            continue
        except NotImplementedError:
            raise
        except Exception as e:
            expect(False, f"dissect({bad[:8].hex()}...) {describe_exception(e)}, expected MessageError",
                   "raise MessageError for anything that is not a transport data message")
        expect(False, f"dissect({bad[:8].hex()}...) of {len(bad)} bytes did not raise MessageError",
               "a transport message is at least 32 bytes (header + tag) and has type 4, reserved bytes 0")


def cases() -> list[Case]:
    return [
        Case("the header of a real message (wireguard)", lambda dissect, inner: _dissect(dissect, "wireguard"),
             "struct.unpack_from('<B3xIQ', datagram)"),
        Case("the header is the same under aes256gcm and null-teaching",
             lambda dissect, inner: (_dissect(dissect, "aes256gcm"), _dissect(dissect, "null-teaching")),
             "the header is never encrypted, whatever the suite"),
        Case("what is not a transport message", _junk, "check the length and type before unpacking"),
        Case("null-teaching: the inner packet is readable", _inner_clear,
             "datagram[16:-16] is the padded packet; IP total length says where it ends"),
        Case("wireguard and aes256gcm: nothing to read", _inner_hidden,
             "return None when the suite encrypts"),
        Case("every suite shows the size, rounded up to 16", _size_leak,
             "encrypted_length = len(datagram) - 16"),
    ]
