"""The server's transport-layer proxy (``--forwarding proxy``), as the seed describes it.

In ``nat`` mode the kernel forwards clients' packets and rewrites their source
address (masquerade); the connection itself runs end to end between the
client and the application server.  In ``proxy`` mode the VPN server
*terminates* every flow and opens a new one of its own to the destination:

=========  =====================================================================
TCP        :mod:`~vpnedu.proxy.tcp`: connect first, then accept; relay with
           half-close, backpressure, resets and refusals passed on, idle timeout
UDP        :mod:`~vpnedu.proxy.udp`: a socket pair per (client, destination),
           replies sent from the original destination address, idle timeout
ICMP echo  :mod:`~vpnedu.proxy.icmp`: the server pings the destination itself and
           answers the client with the real round trip
=========  =====================================================================

How the packets get here: TCP and UDP through TPROXY (:mod:`vpnedu.net.tproxy`);
TCP SYNs and ICMP echo requests are first seen by :meth:`Proxy.intercept`,
which the server's datapath calls for every packet that comes out of the tunnel.
Every flow is in the :class:`~vpnedu.proxy.flows.FlowTable`, with events.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Callable

from ..events import EventBus
from ..flows import FlowRow
from .flows import Flow, FlowTable
from .icmp import EchoRelay
from .tcp import TcpRelay
from .udp import UdpRelay

__all__ = ["Proxy", "Flow", "FlowTable", "DEFAULT_IDLE"]

#: Idle timeouts in seconds per protocol (override with ``--proxy-idle tcp=...,udp=...,icmp=...``).
DEFAULT_IDLE = {"tcp": 600.0, "udp": 30.0, "icmp": 30.0}


def parse_idle(text: str | None) -> dict[str, float]:
    from ..errors import VpneduError
    idle = dict(DEFAULT_IDLE)
    if not text:
        return idle
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip().lower()
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1
        if key not in idle or seconds <= 0:
            raise VpneduError(f"--proxy-idle: {part.strip()!r} is not PROTOCOL=SECONDS",
                              "write e.g. tcp=600,udp=30,icmp=30")
        idle[key] = seconds
    return idle


class Proxy:
    """The three relays, the flow table and the idle sweeper, inside the server's event loop."""

    def __init__(self, events: EventBus, *, subnet: str, local_addresses: set[str],
                 deliver: Callable[[bytes], None], inject: Callable[[bytes], None],
                 peer_of: Callable[[str], str | None] = lambda a: None,
                 idle: dict[str, float] | None = None, connect_timeout: float = 10.0):
        net = ipaddress.ip_network(subnet, strict=False)
        self._net = int(net.network_address)
        self._mask = int(net.netmask)
        self._local = {socket.inet_aton(a) for a in local_addresses}
        self.idle = dict(idle or DEFAULT_IDLE)
        self.table = FlowTable(events)
        self.tcp = TcpRelay(self.table, deliver=deliver, inject=inject, connect_timeout=connect_timeout)
        self.udp = UdpRelay(self.table, peer_of=peer_of)
        self.icmp = EchoRelay(self.table, inject=inject)
        self._sweeper: asyncio.Task | None = None

    def bind(self) -> tuple[int, int]:
        """Open the listening sockets; returns (TCP port, UDP port) for the TPROXY rules."""
        tcp_port = self.tcp.bind()
        try:
            udp_port = self.udp.bind()
        except OSError:
            self.tcp.sock.close()
            raise
        return tcp_port, udp_port

    async def start(self) -> None:
        await self.tcp.start()
        await self.udp.start()
        await self.icmp.start()
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.tcp.close()
        await self.udp.close()
        await self.icmp.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, min(self.idle.values()) / 4))
            for flow in self.table.idle(self.idle):
                if flow.abort is not None:
                    flow.abort("idle")
                else:
                    self.table.close(flow, "idle")

    def intercept(self, peer: str | None, packet: bytes) -> bool:
        """Called by the datapath for each packet out of the tunnel: True if the proxy took it.

        Only two kinds are taken here: a TCP SYN (to connect first, see :mod:`.tcp`) and an ICMP
        echo request, both to an address outside the tunnel and not the server's own.
        Everything else goes to the kernel (where TPROXY catches the rest of TCP and UDP)."""
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return False
        dst = packet[16:20]
        if (int.from_bytes(dst, "big") & self._mask) == self._net or dst in self._local:
            return False
        ihl = (packet[0] & 0xF) * 4
        proto = packet[9]
        if proto == 6:
            if len(packet) >= ihl + 14 and packet[ihl + 13] & 0x12 == 0x02:   # SYN without ACK
                return self.tcp.on_syn(peer, packet, ihl)
            return False
        if proto == 1 and len(packet) >= ihl + 8 and packet[ihl] == 8:       # echo request
            return self.icmp.on_echo(peer, packet, ihl)
        return False

    def flows(self) -> list[FlowRow]:
        return self.table.snapshot()
