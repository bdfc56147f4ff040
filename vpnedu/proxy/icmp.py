"""The ICMP echo relay: the server pings the destination itself and answers the client.

There is no ICMP socket a transparent proxy could be handed, so the server's
datapath gives each echo request from a client (to an address outside the
tunnel) to :meth:`EchoRelay.on_echo` instead of to the kernel.  The relay

1. sends its own echo request to the destination, with an identifier of its own
   per flow and the client's sequence number and payload;
2. when the destination's echo reply comes back, builds the reply the client
   expects -- source the destination, the client's identifier -- and sends it
   into the tunnel.  The round trip the client's ``ping`` prints is therefore
   the real one through the server.

Linux offers unprivileged "ping sockets" (``SOCK_DGRAM, IPPROTO_ICMP``), but
only to groups in ``net.ipv4.ping_group_range``, which by default admits
nobody, not even root; the server runs as root anyway, so it uses one raw ICMP
socket and matches replies by (destination, identifier).

ICMPv6 echo (``ping -6``) goes the same way, through a raw ``IPPROTO_ICMPV6``
socket (the IPv6 ping sockets obey the same ``net.ipv4.ping_group_range``).
Three differences from IPv4 (RFC 4443):

* the types: echo request 128, echo reply 129 (IPv4's are 8 and 0);
* the checksum covers a pseudo-header of both addresses (RFC 4443, 2.3), which
  ICMP for IPv4 does not.  On a raw ICMPv6 socket the kernel fills it in on
  sending and checks it on receiving (RFC 3542, 3.1), since only the kernel knows
  the source address it will choose; the reply the relay builds for the client
  (source: the destination, destination: the client) gets it computed here, by
  :func:`vpnedu.packet.ip.build_icmp_echo`;
* an IPv6 raw socket reads messages without the IP header, and every ICMPv6
  message the host receives -- neighbour discovery too -- would be a copy for it,
  so an ``ICMP6_FILTER`` lets only echo replies through.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Callable

from ..packet.ip import ECHO_REPLY, ECHO_REPLY6, ECHO_REQUEST6, addresses, build_icmp_echo
from .flows import Flow, FlowTable

#: Remember at most this many outstanding echo requests per flow (for the RTT).
MAX_OUTSTANDING = 64
#: setsockopt(IPPROTO_ICMPV6, ICMP6_FILTER, ...) (linux/icmpv6.h; Python does not name it).
ICMP6_FILTER = 1


def icmp6_filter(*passing: int) -> bytes:
    """A ``struct icmp6_filter`` that blocks every ICMPv6 type but ``passing``: 256 bits, one per
    type, in eight 32-bit words of host byte order; a set bit blocks its type (glibc's
    ``ICMP6_FILTER_SETBLOCK``: word ``type >> 5``, bit ``type & 31``)."""
    words = [0xFFFFFFFF] * 8
    for t in passing:
        words[t >> 5] &= ~(1 << (t & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


def _source_towards(dst: str) -> str:
    """The address the kernel would send from to reach ``dst`` (connecting a UDP socket sends nothing)."""
    six = ":" in dst
    with socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, 9))
            return s.getsockname()[0]
        except OSError:
            return "::" if six else "0.0.0.0"


class _EchoFlow:
    def __init__(self, flow: Flow, client_id: int, our_id: int):
        self.flow, self.client_id, self.our_id = flow, client_id, our_id
        self.sent: dict[int, float] = {}


class EchoRelay:
    def __init__(self, table: FlowTable, *, inject: Callable[[bytes], None], versions=(4,)):
        self.table = table
        self.inject = inject
        self.versions = tuple(versions)               # the IP versions to relay echo for
        self.by_client: dict[tuple, _EchoFlow] = {}   # (client ip, client id, destination) -> flow
        self.by_ours: dict[tuple, _EchoFlow] = {}     # (destination, our id) -> flow
        self._next_id = 0x7600
        #: The raw sockets, by IP version: ICMP (4) and ICMPv6 (6).
        self.socks: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sock(self) -> socket.socket | None:
        return self.socks.get(4)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for version in self.versions:
            if version == 6:
                s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
                s.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, icmp6_filter(ECHO_REPLY6))
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.setblocking(False)
            self.socks[version] = s
            self._loop.add_reader(s.fileno(), self._on_readable, version)

    async def close(self) -> None:
        for ef in list(self.by_client.values()):
            self._close(ef, "server stopping")
        for s in self.socks.values():
            self._loop.remove_reader(s.fileno())
            s.close()
        self.socks = {}

    def _new_id(self) -> int:
        for _ in range(65536):
            self._next_id = (self._next_id + 1) & 0xFFFF
            if not any(k[1] == self._next_id for k in self.by_ours):
                return self._next_id
        raise OSError("no free ICMP identifier")

    def on_echo(self, peer: str | None, packet: bytes, ihl: int) -> bool:
        """An echo request from a client to the outside (IPv4, or IPv6 with ``ihl`` 40): relay
        it; True = consumed."""
        version = packet[0] >> 4
        sock = self.socks.get(version)
        if sock is None or len(packet) < ihl + 8:
            return False
        client, dst = addresses(packet)
        cid, seq = struct.unpack_from("!HH", packet, ihl + 4)
        end = 40 + int.from_bytes(packet[4:6], "big") if version == 6 else int.from_bytes(packet[2:4], "big")
        payload = bytes(packet[ihl + 8:end])
        ef = self.by_client.get((client, cid, dst))
        if ef is None:
            flow = self.table.new("icmp", (client, cid), (dst, 0), peer)
            ef = _EchoFlow(flow, cid, self._new_id())
            self.by_client[(client, cid, dst)] = ef
            self.by_ours[(dst, ef.our_id)] = ef
            flow.abort = lambda reason, ef=ef: self._close(ef, reason)
            self.table.opened(flow, (_source_towards(dst), ef.our_id), state="active")
        if version == 6:   # checksum 0: the kernel computes it with the pseudo-header (see above)
            echo = struct.pack("!BBHHH", ECHO_REQUEST6, 0, 0, ef.our_id, seq) + payload
        else:
            echo = build_icmp_echo("0.0.0.0", dst, ident=ef.our_id, seq=seq, payload=payload)[20:]
        try:
            sock.sendto(echo, (dst, 0))
        except OSError:
            return True
        if len(ef.sent) >= MAX_OUTSTANDING:
            ef.sent.pop(next(iter(ef.sent)))
        ef.sent[seq] = time.monotonic()
        self.table.touch(ef.flow, up=len(payload) + 8)
        return True

    def _on_readable(self, version: int = 4) -> None:
        sock = self.socks.get(version)
        for _ in range(64):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            # An IPv4 raw socket reads the IP header too; an IPv6 one only the ICMPv6 message.
            ihl = 0 if version == 6 else (data[0] & 0xF) * 4
            reply = ECHO_REPLY6 if version == 6 else ECHO_REPLY
            if len(data) < ihl + 8 or data[ihl] != reply or data[ihl + 1] != 0:   # only echo replies
                continue
            our_id, seq = struct.unpack_from("!HH", data, ihl + 4)
            ef = self.by_ours.get((addr[0], our_id))
            if ef is None:
                continue
            sent = ef.sent.pop(seq, None)
            if sent is not None:
                ef.flow.rtt_ms = round((time.monotonic() - sent) * 1000, 3)
            payload = bytes(data[ihl + 8:])
            self.inject(build_icmp_echo(addr[0], ef.flow.client[0], ident=ef.client_id, seq=seq,
                                        payload=payload, reply=True))
            self.table.touch(ef.flow, down=len(payload) + 8)

    def _close(self, ef: _EchoFlow, reason: str) -> None:
        if self.by_client.pop((ef.flow.client[0], ef.client_id, ef.flow.destination[0]), None) is None:
            return
        self.by_ours.pop((ef.flow.destination[0], ef.our_id), None)
        self.table.close(ef.flow, reason)
