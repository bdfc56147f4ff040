"""What a course lab is: the calls every notebook makes, and what they return.

There are two labs, and a notebook never needs to know which one it has:

* :class:`~vpnedu.course.real.RealLab` -- network namespaces on this machine, real TUN
  devices, the real ``vpnedu server`` / ``vpnedu client`` processes (root);
* :class:`~vpnedu.course.simulated.SimLab` -- the same hosts and addresses simulated in this
  Python process, running the same daemon and protocol code (no root).

:class:`CourseLab` declares what both provide, as a :class:`typing.Protocol`: a class is a
course lab by having these methods, not by inheriting from anything
(``tests/course/test_course_interface.py`` checks both against it, signature by signature).  A
widget or a notebook written against :class:`CourseLab` works in either mode.

The results are small dataclasses (and named tuples where a notebook unpacks them), each
printing as a sentence a student can read:

=======================  ===============================================================
:class:`PingResult`       ``lab.ping(...)``: sent, received, from which address
:class:`AppResult`        ``lab.app_request()``: the reply, and whom the app server saw
:class:`TunReading`       ``lab.tun_demo()``: one raw packet from a TUN device, decoded
:class:`MarkerOnWire`     ``lab.marker_on_wire()``: is the marker readable on the client's link?
:class:`TrafficSample`    ``lab.traffic(...)`` yields them: bytes each way so far
:class:`~vpnedu.flows.FlowRow`  ``lab.flows()``: the server's flow table
=======================  ===============================================================

A daemon's status (``lab.status(host)``) is the ``status`` reply of its control socket, a
dict, the same that ``vpnedu status --json`` prints; events are :class:`~vpnedu.events.Event`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Protocol

from ..events import Event, EventBus
from ..flows import FlowRow
from ..packet import ip as iplib


# ---------------------------------------------------------------------------- results
@dataclass
class PingResult:
    """``ping -c N`` from a host: how many echo requests went out, how many replies came back."""

    sent: int
    received: int
    destination: str
    source: str

    @classmethod
    def from_ping_output(cls, destination: str, output: str, source: str = "") -> "PingResult":
        """The result as iputils' ``ping`` summarised it ("3 packets transmitted, 3 received")."""
        m = re.search(r"(\d+) packets transmitted, (\d+) received", output)
        sent, got = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        return cls(sent, got, destination, source)

    @property
    def ok(self) -> bool:
        return self.sent > 0 and self.received == self.sent

    def __str__(self) -> str:
        loss = 100 * (self.sent - self.received) // max(self.sent, 1)
        return (f"ping {self.destination} from {self.source}: {self.sent} packets transmitted, "
                f"{self.received} received, {loss}% packet loss")


@dataclass
class AppResult:
    """An app request through the VPN: what came back, and who the app server says asked."""

    reply: str
    sources: list[str]

    def __str__(self) -> str:
        return f"reply: {self.reply!r}; the app server logged the request from {', '.join(self.sources) or 'nobody'}"


@dataclass
class TunReading:
    """One raw packet read from a TUN device, and what its bytes mean."""

    device: str
    raw: bytes
    mode: str

    @classmethod
    def from_packet(cls, device: str, raw: bytes, mode: str) -> "TunReading":
        return cls(device, bytes(raw), mode)

    @property
    def fields(self) -> list[tuple[str, str, str]]:
        """(bytes, field, value) rows: the IPv4 header (RFC 791), then the ICMP header (RFC 792)."""
        p = self.raw
        rows = [("0", "version / IHL", f"{p[0] >> 4} / {(p[0] & 15) * 4} bytes"),
                ("2-3", "total length", str(struct.unpack_from("!H", p, 2)[0])),
                ("8", "TTL", str(p[8])),
                ("9", "protocol", f"{p[9]} ({iplib.PROTO_NAMES.get(p[9], '?')})"),
                ("10-11", "header checksum", f"{struct.unpack_from('!H', p, 10)[0]:#06x}"),
                ("12-15", "source", ".".join(map(str, p[12:16]))),
                ("16-19", "destination", ".".join(map(str, p[16:20])))]
        ihl = (p[0] & 15) * 4
        if p[9] == iplib.PROTO_ICMP and len(p) >= ihl + 8:
            t, c, _, ident, seq = struct.unpack_from("!BBHHH", p, ihl)
            rows += [(f"{ihl}", "ICMP type", f"{t} ({ {8: 'echo request', 0: 'echo reply'}.get(t, '?') })"),
                     (f"{ihl + 4}-{ihl + 5}", "ICMP identifier", str(ident)),
                     (f"{ihl + 6}-{ihl + 7}", "ICMP sequence", str(seq)),
                     (f"{ihl + 8}-", "payload", repr(p[ihl + 8:ihl + 40]))]
        return rows

    def __str__(self) -> str:
        lines = [f"read {len(self.raw)} bytes from TUN device {self.device} ({self.mode}): {iplib.describe(self.raw)}",
                 "hex: " + self.raw.hex(" ")]
        lines += [f"  {b:>6}  {f:<16} {v}" for b, f, v in self.fields]
        return "\n".join(lines)


class MarkerOnWire(NamedTuple):
    """A marker sent through the tunnel, and whether it could be read on the client's outer link
    (only with the ``null-teaching`` suite, which does not encrypt)."""

    marker: str
    visible: bool


class TrafficSample(NamedTuple):
    """Seconds since the traffic started, and the bytes the client's outer link carried so far
    each way (``up``: sent by the client)."""

    t: float
    up: int
    down: int


# ---------------------------------------------------------------------------- the interface
class CourseLab(Protocol):
    """The lab a notebook drives: four hosts (client, internet, server, app), the vpnedu server
    and client daemons on two of them, and ways to look at and poke the traffic.

    Methods raise :class:`~vpnedu.errors.VpneduError` (one line: the problem and the fix) for a
    call that cannot be done now, e.g. ``start_client()`` before ``start_server()``.
    """

    #: "real" or "sim".
    mode: str
    #: The cipher suite the daemons are provisioned with.
    suite: str
    #: The two daemons' events (the same kinds in both modes; the real lab relays them).
    client_events: EventBus
    server_events: EventBus

    @property
    def banner(self) -> str:
        """What this lab is, in a sentence or two (the notebook prints it first)."""
        ...

    @property
    def dir(self) -> Path:
        """The folder holding the lab's configs (``server.conf``, ``client.conf``) and logs."""
        ...

    # ------------------------------------------------------------------ life cycle
    def up(self) -> "CourseLab":
        """Create the hosts if need be; returns the lab."""
        ...

    def down(self) -> None:
        """Stop the daemons (and, real, delete the namespaces)."""
        ...

    def exists(self) -> bool:
        ...

    def provision(self, suite: str | None = None, split: bool = False) -> None:
        """``vpnedu server init`` + ``vpnedu server add-client client`` into :attr:`dir`."""
        ...

    def start_server(self, suite: str | None = None, forwarding: str = "nat") -> dict:
        """Start the server (provisioning first if need be); its status once it runs."""
        ...

    def start_client(self, split: bool = False, timeout: float | None = None) -> dict:
        """Start the client; its status once its handshake is done (an error after ``timeout``
        seconds without one; ``None``: the lab's own default)."""
        ...

    def stop_client(self) -> None:
        ...

    def stop_server(self) -> None:
        ...

    def restart(self, suite: str | None = None, split: bool = False) -> dict:
        """Stop both, provision again (another suite, a split tunnel), start both."""
        ...

    # ------------------------------------------------------------------ looking
    def status(self, host: str) -> dict:
        """The daemon's status on ``host`` ("server" or "client"), as ``vpnedu status --json``."""
        ...

    def routes(self, host: str = "client") -> list[str]:
        """The host's routing table, one ``ip route`` line each."""
        ...

    def addresses(self, host: str) -> dict[str, list[str]]:
        """The host's IPv4 addresses by interface, as ``"10.0.0.2/24"``."""
        ...

    def app_log(self) -> list[str]:
        """The app server's log, one request a line, the asker's address first."""
        ...

    def flows(self) -> list[FlowRow]:
        """The server's flow table (its NAT's conntrack, or its proxy's flows)."""
        ...

    # ------------------------------------------------------------------ doing
    def ping(self, host: str, destination: str, count: int = 3) -> PingResult:
        ...

    def app_request(self, marker: str | None = None) -> AppResult:
        """The client asks the app server something through the VPN; who did the app see?"""
        ...

    def marker_on_wire(self, marker: str | None = None) -> MarkerOnWire:
        ...

    def tamper_next(self) -> Event | None:
        """Alter one data packet from client to server; the server's ``packet.dropped`` event."""
        ...

    def replay(self) -> Event | None:
        """Send the server a data packet a second time; the server's ``packet.dropped`` event."""
        ...

    def tun_demo(self, name: str = "tun-demo") -> TunReading:
        """Create a TUN device on the client, ping an address routed into it, read the packet."""
        ...

    def traffic(self, kind: str = "vpnedu", seconds: float = 4.0, interval: float = 0.5
                ) -> Iterator[TrafficSample]:
        """Traffic from the client for ``seconds``, a sample every ``interval``: through the
        tunnel ("vpnedu"), or, with the daemons stopped, over the plain link ("plain")."""
        ...
