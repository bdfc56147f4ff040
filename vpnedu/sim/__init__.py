"""Simulation: the real protocol core on an in-memory network, no root needed.

The same :class:`~vpnedu.protocol.device.Device` that runs over real UDP
sockets runs here over :class:`MemoryNetwork`, a queue of datagrams between
endpoints, under a :class:`FakeClock` that moves only when told to.  Tests,
``vpnedu handshake-demo`` and the notebooks in simulated mode all use it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..events import EventBus
from ..protocol.cookie import Endpoint
from ..protocol.device import Datagram, Device
from ..protocol.keys import generate_private_key
from ..protocol.peer import Peer


class FakeClock:
    """A clock that only moves when :meth:`advance` is called.

    Call it for monotonic seconds; :meth:`wall` gives matching Unix time.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0):
        self.now = start
        self._offset = wall_start - start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self._offset

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@dataclass
class Captured:
    """One datagram seen on the simulated wire."""

    time: float
    source: Endpoint
    destination: Endpoint
    data: bytes


@dataclass
class MemoryNetwork:
    """Datagrams between devices, delivered in order when :meth:`run` is called.

    ``on_wire`` may inspect, alter (return new bytes) or drop (return None) each
    datagram in flight: that is how tests tamper with and replay packets.
    """

    clock: FakeClock = field(default_factory=FakeClock)
    devices: dict[Endpoint, Device] = field(default_factory=dict)
    in_flight: deque[tuple[bytes, Endpoint, Endpoint]] = field(default_factory=deque)
    #: IP packets each endpoint's device delivered (what it would write to TUN).
    delivered: dict[Endpoint, list[tuple[Peer, bytes]]] = field(default_factory=dict)
    capture: list[Captured] = field(default_factory=list)
    on_wire: Callable[[bytes, Endpoint, Endpoint], bytes | None] | None = None

    def attach(self, endpoint: Endpoint, device: Device) -> None:
        self.devices[endpoint] = device
        self.delivered.setdefault(endpoint, [])

    def send(self, source: Endpoint, datagrams: list[Datagram]) -> None:
        for data, dest in datagrams:
            self.in_flight.append((data, source, dest))

    def inject(self, data: bytes, source: Endpoint, destination: Endpoint) -> None:
        """Put an arbitrary datagram on the wire (an attacker, a replay)."""
        self.in_flight.append((data, source, destination))

    def run(self, limit: int = 10_000) -> int:
        """Deliver datagrams (and the replies they cause) until none are left."""
        count = 0
        while self.in_flight and count < limit:
            data, src, dst = self.in_flight.popleft()
            if self.on_wire is not None:
                data = self.on_wire(data, src, dst)
                if data is None:
                    continue
            self.capture.append(Captured(self.clock.now, src, dst, data))
            count += 1
            dev = self.devices.get(dst)
            if dev is None:
                continue
            got = dev.receive(data, src)
            self.delivered[dst].extend(got.packets)
            self.send(dst, got.datagrams)
        return count

    def tick(self) -> None:
        """Run every device's timers at the current fake time, and deliver the results."""
        for ep, dev in self.devices.items():
            self.send(ep, dev.tick())
        self.run()

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Let time pass in steps, running timers and deliveries as a real loop would."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.advance(min(step, end - self.clock.now))
            self.tick()


@dataclass
class Pair:
    """Two peers on a :class:`MemoryNetwork`: a "client" (10.0.0.2) and a "server" (10.0.0.1)."""

    net: MemoryNetwork
    events: EventBus
    client: Device
    server: Device
    client_ep: Endpoint
    server_ep: Endpoint

    @property
    def server_peer(self) -> Peer:
        """The server as the client's peer."""
        return self.client.peers[self.server.public_key]

    @property
    def client_peer(self) -> Peer:
        """The client as the server's peer."""
        return self.server.peers[self.client.public_key]

    def handshake(self) -> None:
        self.net.send(self.client_ep, self.client.initiate(self.server_peer))
        self.net.run()

    def client_sends(self, packet: bytes) -> None:
        self.net.send(self.client_ep, self.client.send_packet(packet))
        self.net.run()

    def server_sends(self, packet: bytes) -> None:
        self.net.send(self.server_ep, self.server.send_packet(packet))
        self.net.run()


def make_pair(suite: str = "wireguard", *, allow_insecure: bool = False, psk: bytes | None = None,
              events: EventBus | None = None, clock: FakeClock | None = None, **device_kw) -> Pair:
    """Build two devices that know each other, on an in-memory network."""
    clock = clock or FakeClock()
    bus = events or EventBus(clock=clock.wall)
    net = MemoryNetwork(clock=clock)
    client_ep, server_ep = ("192.0.2.2", 51820), ("203.0.113.1", 51820)
    common = dict(suite=suite, allow_insecure=allow_insecure, events=bus, clock=clock,
                  wallclock=clock.wall, **device_kw)
    server = Device(generate_private_key(), name="server", **common)
    client = Device(generate_private_key(), name="client", **common)
    server.add_peer(client.public_key, preshared_key=psk, allowed_ips=["10.0.0.2/32"], name="client")
    client.add_peer(server.public_key, preshared_key=psk, endpoint=server_ep,
                    allowed_ips=["10.0.0.0/24"], name="server")
    net.attach(client_ep, client)
    net.attach(server_ep, server)
    return Pair(net, bus, client, server, client_ep, server_ep)
