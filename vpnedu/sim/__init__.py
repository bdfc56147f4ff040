"""Simulation: the real protocol core on an in-memory network, no root needed.

The same :class:`~vpnedu.protocol.device.Device` that runs over real UDP
sockets runs here over :class:`MemoryNetwork`, a queue of datagrams between
endpoints, under a :class:`FakeClock` that moves only when told to.  Tests,
``vpnedu handshake-demo`` and the notebooks in simulated mode all use it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from ..events import EventBus
from ..protocol.cookie import Endpoint
from ..protocol.device import Datagram, Device
from ..protocol.keys import generate_private_key
from ..protocol.peer import Peer


class FakeClock:
    """A clock that only moves when :meth:`advance` (or :meth:`sleep`) is called.

    Call it for monotonic seconds; :meth:`wall` gives matching Unix time, and
    :attr:`wall_offset` is what a :class:`~vpnedu.protocol.device.Device` adds to its
    ``now`` to get it.  :class:`RealClock` has the same calls on the real clocks.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_800_000_000.0):
        self.now = start
        self.wall_offset = wall_start - start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def sleep(self, seconds: float) -> None:
        """Waiting on a fake clock is moving it."""
        self.now += max(0.0, seconds)


class RealClock:
    """The monotonic clock, with :class:`FakeClock`'s calls (the simulation's default)."""

    def __init__(self) -> None:
        self.wall_offset = time.time() - time.monotonic()

    def __call__(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.monotonic() + self.wall_offset

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


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
            got = dev.receive(data, src, self.clock.now)
            self.delivered[dst].extend(got.packets)
            self.send(dst, got.datagrams)
        return count

    def tick(self) -> None:
        """Run every device's timers at the current fake time, and deliver the results."""
        for ep, dev in self.devices.items():
            self.send(ep, dev.tick(self.clock.now))
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

    @property
    def now(self) -> float:
        """The network's (fake) time: what to pass as ``now`` to the devices."""
        return self.net.clock.now

    def handshake(self) -> None:
        self.net.send(self.client_ep, self.client.initiate(self.server_peer, self.now))
        self.net.run()

    def client_sends(self, packet: bytes) -> None:
        self.net.send(self.client_ep, self.client.send_packet(packet, self.now))
        self.net.run()

    def server_sends(self, packet: bytes) -> None:
        self.net.send(self.server_ep, self.server.send_packet(packet, self.now))
        self.net.run()


def make_pair(suite: str = "wireguard", *, allow_insecure: bool = False, psk: bytes | None = None,
              events: EventBus | None = None, clock: FakeClock | None = None,
              random: Callable[[int], bytes] | None = None, **device_kw) -> Pair:
    """Build two devices that know each other, on an in-memory network.  ``random(n)`` is the
    source of every random byte (keys included): pass a seeded one
    (:class:`vpnedu.testing.SeededRandom`) and every run produces the same bytes."""
    clock = clock or FakeClock()
    bus = events or EventBus(clock=clock.wall)
    net = MemoryNetwork(clock=clock)
    client_ep, server_ep = ("192.0.2.2", 51820), ("203.0.113.1", 51820)
    common = dict(suite=suite, allow_insecure=allow_insecure, events=bus, wall_offset=clock.wall_offset,
                  **device_kw)
    if random is not None:
        common["random"] = random
        keys = (generate_private_key(random), generate_private_key(random))
    else:
        keys = (generate_private_key(), generate_private_key())
    server = Device(keys[0], name="server", **common)
    client = Device(keys[1], name="client", **common)
    server.add_peer(client.public_key, preshared_key=psk, allowed_ips=["10.0.0.2/32"], name="client")
    client.add_peer(server.public_key, preshared_key=psk, endpoint=server_ep,
                    allowed_ips=["10.0.0.0/24"], name="server")
    net.attach(client_ep, client)
    net.attach(server_ep, server)
    return Pair(net, bus, client, server, client_ep, server_ep)
