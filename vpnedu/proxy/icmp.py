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
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Callable

from ..packet.ip import build_icmp_echo
from .flows import Flow, FlowTable

#: Remember at most this many outstanding echo requests per flow (for the RTT).
MAX_OUTSTANDING = 64


def _source_towards(dst: str) -> str:
    """The address the kernel would send from to reach ``dst`` (connecting a UDP socket sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dst, 9))
            return s.getsockname()[0]
        except OSError:
            return "0.0.0.0"


class _EchoFlow:
    def __init__(self, flow: Flow, client_id: int, our_id: int):
        self.flow, self.client_id, self.our_id = flow, client_id, our_id
        self.sent: dict[int, float] = {}


class EchoRelay:
    def __init__(self, table: FlowTable, *, inject: Callable[[bytes], None]):
        self.table = table
        self.inject = inject
        self.by_client: dict[tuple, _EchoFlow] = {}   # (client ip, client id, destination) -> flow
        self.by_ours: dict[tuple, _EchoFlow] = {}     # (destination, our id) -> flow
        self._next_id = 0x7600
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    async def close(self) -> None:
        for ef in list(self.by_client.values()):
            self._close(ef, "server stopping")
        if self.sock is not None:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _new_id(self) -> int:
        for _ in range(65536):
            self._next_id = (self._next_id + 1) & 0xFFFF
            if not any(k[1] == self._next_id for k in self.by_ours):
                return self._next_id
        raise OSError("no free ICMP identifier")

    def on_echo(self, peer: str | None, packet: bytes, ihl: int) -> bool:
        """An echo request from a client to the outside: relay it; True = consumed."""
        if self.sock is None or len(packet) < ihl + 8:
            return False
        client, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
        cid, seq = struct.unpack_from("!HH", packet, ihl + 4)
        payload = bytes(packet[ihl + 8:])
        ef = self.by_client.get((client, cid, dst))
        if ef is None:
            flow = self.table.new("icmp", (client, cid), (dst, 0), peer)
            ef = _EchoFlow(flow, cid, self._new_id())
            self.by_client[(client, cid, dst)] = ef
            self.by_ours[(dst, ef.our_id)] = ef
            flow.abort = lambda reason, ef=ef: self._close(ef, reason)
            self.table.opened(flow, (_source_towards(dst), ef.our_id), state="active")
        echo = build_icmp_echo("0.0.0.0", dst, ident=ef.our_id, seq=seq, payload=payload)[20:]
        try:
            self.sock.sendto(echo, (dst, 0))
        except OSError:
            return True
        if len(ef.sent) >= MAX_OUTSTANDING:
            ef.sent.pop(next(iter(ef.sent)))
        ef.sent[seq] = time.monotonic()
        self.table.touch(ef.flow, up=len(payload) + 8)
        return True

    def _on_readable(self) -> None:
        for _ in range(64):
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            ihl = (data[0] & 0xF) * 4
            if len(data) < ihl + 8 or data[ihl] != 0:   # only echo replies
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
