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

Both families: a tunnel with an IPv6 subnet (a ULA /64 beside 10.0.0.0/24) gets IPv6
listeners of its own (``IPV6_V6ONLY`` sockets on ``::``), IPv6 TPROXY rules, and ICMPv6 echo
relayed like ICMP's.  A client's IPv6 flow leaves from the server's IPv6 address, an IPv4 flow
from its IPv4 one: the proxy never translates between the families.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Callable

from ..events import EventBus
from ..flows import FlowRow
from .flows import DEFAULT_IDLE, Flow, FlowTable, sweep_idle
from .icmp import EchoRelay
from .tcp import TcpRelay
from .udp import UdpRelay

__all__ = ["Proxy", "Flow", "FlowTable", "DEFAULT_IDLE"]



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

    def __init__(self, events: EventBus, *, subnet: str | None, local_addresses: set[str],
                 deliver: Callable[[bytes], None], inject: Callable[[bytes], None],
                 peer_of: Callable[[str], str | None] = lambda a: None,
                 idle: dict[str, float] | None = None, connect_timeout: float = 10.0,
                 subnet6: str | None = None):
        #: The tunnel's subnet per family (4 and/or 6): the proxy serves the families it has.
        self.subnets = {n.version: n for n in (ipaddress.ip_network(x, strict=False)
                                               for x in (subnet, subnet6) if x)}
        if not self.subnets:
            raise ValueError("the proxy needs the tunnel's IPv4 or IPv6 subnet")
        self._local = {ipaddress.ip_address(a).packed for a in local_addresses}
        self.idle = dict(idle or DEFAULT_IDLE)
        self.table = FlowTable(events)
        self.tcp = TcpRelay(self.table, deliver=deliver, inject=inject, connect_timeout=connect_timeout)
        self.udp = UdpRelay(self.table, peer_of=peer_of)
        self.icmp = EchoRelay(self.table, inject=inject, versions=sorted(self.subnets))
        self._sweeper: asyncio.Task | None = None

    def bind(self) -> dict[int, tuple[int, int]]:
        """Open the listening sockets, for each family the tunnel has; returns {4: (TCP port, UDP
        port), 6: (...)} for the TPROXY rules.  IPv6's listeners take IPv4's port numbers when
        those are free for IPv6 too (they usually are), else ports of their own."""
        ports: dict[int, tuple[int, int]] = {}
        try:
            for version in sorted(self.subnets):
                tcp_port = self.tcp.bind(version, prefer=ports.get(4, (0, 0))[0])
                udp_port = self.udp.bind(version, prefer=ports.get(4, (0, 0))[1])
                ports[version] = (tcp_port, udp_port)
        except OSError:
            self.close_sockets()
            raise
        return ports

    def sockets(self) -> list[socket.socket]:
        """The listening sockets :meth:`bind` opened (the server closes them if it never starts)."""
        return [s for s in (*self.tcp.socks.values(), *self.udp.socks.values()) if s is not None]

    def close_sockets(self) -> None:
        for s in self.sockets():
            if s.fileno() >= 0:
                s.close()

    async def start(self) -> None:
        await self.tcp.start()
        await self.udp.start()
        await self.icmp.start()
        self._sweeper = asyncio.ensure_future(sweep_idle(self.table, self.idle))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.tcp.close()
        await self.udp.close()
        await self.icmp.close()

    def _outside(self, version: int, dst: bytes) -> bool:
        """Whether ``dst`` is somewhere the proxy carries flows to: not in the tunnel, not the
        server itself (and for IPv6 not multicast, ff00::/8, nor link-local, fe80::/10, which
        no router forwards)."""
        net = self.subnets.get(version)
        if net is None or dst in self._local:
            return False
        if (int.from_bytes(dst, "big") & int(net.netmask)) == int(net.network_address):
            return False
        return version == 4 or not (dst[0] == 0xFF or (dst[0] == 0xFE and dst[1] & 0xC0 == 0x80))

    def intercept(self, peer: str | None, packet: bytes) -> bool:
        """Called by the datapath for each packet out of the tunnel: True if the proxy took it.

        Only two kinds are taken here: a TCP SYN (to connect first, see :mod:`.tcp`) and an ICMP
        echo request (ICMPv6's, type 128, for IPv6), both to an address outside the tunnel and
        not the server's own.  Everything else goes to the kernel (where TPROXY catches the rest
        of TCP and UDP).  An IPv6 packet is read only when TCP or ICMPv6 follows the 40-byte
        header directly; with extension headers in between it goes to the kernel too."""
        if len(packet) < 20:
            return False
        version = packet[0] >> 4
        if version == 4:
            dst, ihl, proto = packet[16:20], (packet[0] & 0xF) * 4, packet[9]
            icmp, echo = 1, 8           # ICMP, echo request
        elif version == 6 and len(packet) >= 40:
            dst, ihl, proto = packet[24:40], 40, packet[6]
            icmp, echo = 58, 128        # ICMPv6, echo request
        else:
            return False
        if not self._outside(version, bytes(dst)):
            return False
        if proto == 6:
            if len(packet) >= ihl + 14 and packet[ihl + 13] & 0x12 == 0x02:   # SYN without ACK
                return self.tcp.on_syn(peer, packet, ihl)
            return False
        if proto == icmp and len(packet) >= ihl + 8 and packet[ihl] == echo:
            return self.icmp.on_echo(peer, packet, ihl)
        return False

    def flows(self) -> list[FlowRow]:
        return self.table.snapshot()
