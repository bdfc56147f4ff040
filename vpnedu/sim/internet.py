"""The simulated internet: the wire between simulated hosts, with a capture and a trace.

:class:`SimInternet` plays the cables and the switch: a host puts an IP packet on it, and it
delivers the packet to the host that owns the destination address (an ``eth*`` address, or
any address of the router "internet").  It keeps what a capture on the links would record
(:attr:`SimInternet.wire`, :class:`WirePacket`), every hop of every packet through the hosts
(:attr:`SimInternet.hops`), and gives an attacker the two powers a real network gives one:
see and change a packet in flight (:attr:`SimInternet.on_wire`), and put any packet on the
wire (:meth:`SimInternet.inject`).
"""

from __future__ import annotations

import ipaddress
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..packet import ip as iplib
from .host import SimHost, TraceEntry




@dataclass
class WirePacket:
    """One packet on the simulated internet (what tcpdump on a link would record)."""

    time: float
    source_host: str
    destination_host: str
    packet: bytes

    @property
    def udp_payload(self) -> bytes:
        p = iplib.parse(self.packet)
        return p.payload[8:] if p.protocol == iplib.PROTO_UDP else b""

    def __str__(self) -> str:
        return f"{self.source_host} -> {self.destination_host}: {iplib.describe(self.packet)}"


class SimInternet:
    """Delivers IP packets between simulated hosts by destination address.

    ``on_wire(wire_packet)`` may return new bytes (tamper) or None (drop) for each
    packet in flight.  :attr:`wire` keeps the latest packets (bounded), like a capture.
    """

    def __init__(self, keep: int = 5000, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._owners: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, tuple[SimHost, str]] = {}
        self._queue: deque[tuple[SimHost | Outsider, bytes]] = deque()
        self.wire: deque[WirePacket] = deque(maxlen=keep)
        self.hops: deque[TraceEntry] = deque(maxlen=keep)
        self._seq = itertools.count(1)
        self.on_wire: Callable[[WirePacket], bytes | None] | None = None

    def register(self, host: SimHost, address, dev: str) -> None:
        if dev.startswith("eth") or host.name == "internet":
            self._owners[ipaddress.ip_address(address)] = (host, dev)

    def unregister(self, address) -> None:
        self._owners.pop(ipaddress.ip_address(address), None)

    def put(self, source: SimHost, packet: bytes) -> None:
        self._queue.append((source, packet))

    def inject(self, packet: bytes, source: str = "attacker") -> None:
        """Put any packet on the wire (an attacker; a replay)."""
        self._queue.append((Outsider(source), packet))

    def trace(self, host: SimHost, dev: str, direction: str, packet: bytes, note: str = "") -> None:
        self.hops.append(TraceEntry(next(self._seq), self.clock(), host.name, dev, direction, packet, note))

    def deliver(self) -> int:
        """Deliver every queued packet (and what they cause); returns how many."""
        n = 0
        while self._queue:
            source, packet = self._queue.popleft()
            dst = ipaddress.ip_address(iplib.destination_address(packet))
            owner = self._owners.get(dst)
            wp = WirePacket(self.clock(), source.name, owner[0].name if owner else "?", packet)
            if self.on_wire is not None:
                changed = self.on_wire(wp)
                if changed is None:
                    continue
                wp.packet = packet = changed
            self.wire.append(wp)
            n += 1
            if owner is not None:
                owner[0].receive(packet, owner[1])
        return n


class Outsider:
    """The source of a packet put on the wire by no simulated host: an attacker, a replay."""

    def __init__(self, name: str):
        self.name = name
