"""The flow table: every connection the proxy relays, as a student would draw it.

A *flow* is one conversation between a client and a destination outside the
tunnel.  The proxy sits in the middle, so each flow has two legs::

    client 10.0.0.2:40312  ==tunnel==>  [server]  203.0.113.2:51044  ---->  192.0.2.80:80
           (client)                      (proxy: the server's own address)   (destination)

The destination only ever sees the middle address.  An IPv6 flow has IPv6 addresses on
both legs (the client's ULA address in the tunnel, the server's own towards the
destination), written in brackets as in a URL (RFC 3986): ``[fd00:1::2]:40312``.  Each flow counts the bytes
relayed each way (``bytes_up``: client to destination), has a state, and
closes on a clean end, a reset, a refusal, or the idle timeout.  Opening and
closing are events (``proxy.flow.opened`` / ``proxy.flow.closed``), and the
live table is part of the server's status (``vpnedu status --flows``), as rows
(:class:`~vpnedu.flows.FlowRow`) like those NAT's conntrack gives.

A closed flow leaves its counts behind in the table's per-peer usage
(:meth:`FlowTable.usage`): for each tunnel peer and protocol, how many flows and how
many bytes each way, as ``wg show`` keeps a peer's transfer after its packets are gone.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from ..events import EventBus
from ..flows import FlowRow, endpoint_text

Address = tuple[str, int]

#: Idle timeouts in seconds per protocol (override with ``--proxy-idle tcp=...,udp=...,icmp=...``).
DEFAULT_IDLE = {"tcp": 600.0, "udp": 30.0, "icmp": 30.0}

#: The explicit proxies' flows (:mod:`.socks5`) ride on TCP, and take TCP's idle timeout; a
#: SOCKS5 UDP association's (:mod:`.socks5_udp`) on UDP, and take UDP's.
TRANSPORT = {"socks5": "tcp", "http-connect": "tcp", "http": "tcp", "socks5-udp": "udp"}


def fmt(addr: Address | None) -> str:
    """``192.0.2.80:80``, ``[2001:db8:a::80]:80`` (brackets: the address has colons of its own)."""
    return endpoint_text(*addr) if addr else ""


@dataclass(eq=False)
class Flow:
    id: int
    proto: str                      # "tcp", "udp", "icmp" (the "port": the echo identifier), "socks5"
    client: Address
    destination: Address
    peer: str | None = None
    proxy: Address | None = None    # the server's own end towards the destination
    state: str = "opening"
    bytes_up: int = 0
    bytes_down: int = 0
    opened: float = 0.0
    last: float = 0.0
    rtt_ms: float | None = None     # ICMP: the last measured round trip to the destination
    #: Called to tear the flow down (idle timeout, server stopping).
    abort: Callable[[str], None] | None = field(default=None, repr=False)

    def row(self, now: float) -> FlowRow:
        """The flow as a row of the flow table (the same kind of row NAT's conntrack gives)."""
        return FlowRow(self.proto, fmt(self.client), fmt(self.proxy), fmt(self.destination), self.state,
                       self.bytes_up, self.bytes_down, age=round(now - self.opened, 3), id=self.id,
                       idle=round(now - self.last, 3), peer=self.peer, rtt_ms=self.rtt_ms)


class FlowTable:
    """The proxy's live flows, with events on open and close."""

    def __init__(self, events: EventBus, clock: Callable[[], float] = time.monotonic):
        self.events = events
        self.clock = clock
        self.flows: dict[int, Flow] = {}
        self._ids = itertools.count(1)
        self.opened_total = 0
        self.closed_total = 0
        #: Closed flows' counts: peer -> protocol -> [flows, bytes up, bytes down].
        self._closed_usage: dict[str, dict[str, list[int]]] = {}

    def new(self, proto: str, client: Address, destination: Address, peer: str | None = None) -> Flow:
        """A flow that is being set up (not yet announced: the destination may refuse)."""
        now = self.clock()
        f = Flow(next(self._ids), proto, client, destination, peer=peer, opened=now, last=now)
        self.flows[f.id] = f
        return f

    def opened(self, flow: Flow, proxy: Address | None, state: str = "established") -> None:
        flow.proxy = proxy
        flow.state = state
        flow.last = self.clock()
        self.opened_total += 1
        self.events.emit("proxy.flow.opened", flow.peer, id=flow.id, proto=flow.proto, client=fmt(flow.client),
                         proxy=fmt(proxy), destination=fmt(flow.destination))

    def touch(self, flow: Flow, up: int = 0, down: int = 0) -> None:
        flow.bytes_up += up
        flow.bytes_down += down
        flow.last = self.clock()

    def close(self, flow: Flow, reason: str) -> None:
        if self.flows.pop(flow.id, None) is None:
            return
        flow.state = "closed"
        self.closed_total += 1
        counts = self._closed_usage.setdefault(flow.peer or "", {}).setdefault(flow.proto, [0, 0, 0])
        counts[0] += 1
        counts[1] += flow.bytes_up
        counts[2] += flow.bytes_down
        self.events.emit("proxy.flow.closed", flow.peer, id=flow.id, proto=flow.proto, client=fmt(flow.client),
                         proxy=fmt(flow.proxy), destination=fmt(flow.destination), bytes_up=flow.bytes_up,
                         bytes_down=flow.bytes_down, age=round(self.clock() - flow.opened, 3), reason=reason)

    def idle(self, limits: dict[str, float]) -> list[Flow]:
        """Flows that have been silent longer than their protocol's idle timeout."""
        now = self.clock()
        return [f for f in self.flows.values()
                if now - f.last > limits.get(f.proto, limits.get(TRANSPORT.get(f.proto, ""), 60.0))]

    def usage(self, into: dict | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """Per tunnel peer (its label; "" for none) and protocol: ``flows`` (closed and live),
        ``bytes_up`` (from the peer to its destinations) and ``bytes_down``, since the server
        started -- added to ``into`` if given (the server sums its services' tables so)."""
        out = {} if into is None else into

        def add(peer: str | None, proto: str, n: int, up: int, down: int) -> None:
            c = out.setdefault(peer or "", {}).setdefault(proto, {"flows": 0, "bytes_up": 0, "bytes_down": 0})
            c["flows"] += n
            c["bytes_up"] += up
            c["bytes_down"] += down
        for peer, by in self._closed_usage.items():
            for proto, (n, up, down) in by.items():
                add(peer, proto, n, up, down)
        for f in self.flows.values():
            add(f.peer, f.proto, 1, f.bytes_up, f.bytes_down)
        return out

    def snapshot(self) -> list[FlowRow]:
        """The live flows as rows, oldest first."""
        now = self.clock()
        return [f.row(now) for f in sorted(self.flows.values(), key=lambda f: f.id)]

    def __len__(self) -> int:
        return len(self.flows)


async def sweep_idle(table: FlowTable, limits: dict[str, float]) -> None:
    """Close, for ever (until cancelled), the flows of ``table`` silent longer than their
    protocol's idle timeout: a client that vanished without a FIN or RST (its laptop closed)
    would otherwise hold the server's sockets as long as the server runs.  Checks four times
    per shortest timeout, at least once a second."""
    while True:
        await asyncio.sleep(min(1.0, min(limits.values()) / 4))
        for flow in table.idle(limits):
            if flow.abort is not None:
                flow.abort("idle")
            else:
                table.close(flow, "idle")
