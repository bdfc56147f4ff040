"""Simulated machines: just enough of an operating system's network stack to run a VPN on.

A :class:`SimHost` has what ``ip addr`` and ``ip route`` show on a real host --
interfaces with addresses, and a routing table -- plus the three things the
kernel does with an IP packet:

* **output**: a packet the host sends (a ping, a UDP datagram) is routed by its
  destination (longest prefix wins) to an interface: ``eth0`` puts it on the
  simulated internet, a TUN device queues it for the program that holds the
  TUN open (the VPN daemon reads it from there);
* **input**: a packet for one of the host's own addresses is delivered locally:
  an ICMP echo request is answered (as every Linux host does), a UDP datagram
  goes to the socket bound to its port;
* **forwarding** (off unless enabled, like ``net.ipv4.ip_forward``): a packet for
  someone else is routed on, and *masquerading* (NAT) rewrites the source of
  packets leaving for the internet to the host's own address, remembering the
  flow so that replies can be rewritten back.  The remembered flows are what
  ``conntrack -L`` shows on Linux; :meth:`SimHost.flows` returns them as rows of
  vpnedu's flow table (:class:`~vpnedu.flows.FlowRow`).

Both IPv4 and IPv6 are simulated, with ICMP echo (ICMPv6's for IPv6) and UDP: that is all
the course's simulated app host needs (it answers pings and UDP requests, and logs who
asked).  The simulation leaves out what a real IPv6 host also does on a link (neighbour
discovery, router advertisements, multicast): its cables know every address already.

A host may also have an *output filter* (:attr:`SimHost.output_filters`): functions that
see every packet the host is about to transmit and may drop it, as an nftables ``output``
chain does (the client's kill switch uses one).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import VpneduError
from ..flows import FlowRow, endpoint_text
from ..net.routes import MAIN_TABLE, Route, Rule
from ..packet import ip as _ip

if TYPE_CHECKING:
    from .tun import MemoryTun

EPHEMERAL_PORTS = (40000, 60999)


@dataclass
class TraceEntry:
    """One step of a packet's journey: which host saw it, on which interface, going which way."""

    seq: int
    time: float
    host: str
    dev: str
    direction: str  # "in", "out", "tun->program", "program->tun", "nat", "drop"
    packet: bytes
    note: str = ""

    def __str__(self) -> str:
        arrow = {"in": "<-", "out": "->"}.get(self.direction, self.direction)
        extra = f"  ({self.note})" if self.note else ""
        return f"{self.host:>8} {self.dev:<8} {arrow:<6} {_ip.describe(self.packet)}{extra}"


@dataclass
class NatFlow:
    """One masqueraded flow: the client's address, the address it was rewritten to, the destination."""

    proto: str
    client: tuple[str, int]
    proxy: tuple[str, int]
    destination: tuple[str, int]
    opened: float
    bytes_up: int = 0
    bytes_down: int = 0
    state: str = "new"

    def row(self, now: float) -> FlowRow:
        """The flow as a row of vpnedu's flow table (what the real server's conntrack gives)."""
        def ep(a):
            return endpoint_text(a[0], a[1])
        return FlowRow(self.proto, ep(self.client), ep(self.proxy), ep(self.destination), self.state,
                       self.bytes_up, self.bytes_down, age=round(now - self.opened, 1))


def _ports(packet: bytes, proto: int, ihl: int) -> tuple[int, int] | None:
    """(source port, destination port) for UDP; (id, id) for an ICMP or ICMPv6 echo; else None."""
    if proto == _ip.PROTO_UDP and len(packet) >= ihl + 8:
        return struct.unpack_from("!HH", packet, ihl)
    echo = (*_ip.ECHO_TYPES[4], *_ip.ECHO_TYPES[6])
    if proto in (_ip.PROTO_ICMP, _ip.PROTO_ICMPV6) and len(packet) >= ihl + 8 and packet[ihl] in echo:
        ident = struct.unpack_from("!H", packet, ihl + 4)[0]
        return ident, ident
    return None


def rewrite(packet: bytes, *, src: str | None = None, dst: str | None = None,
            sport: int | None = None, dport: int | None = None) -> bytes:
    """A copy of an IPv4 or IPv6 packet with new addresses/ports and correct checksums.

    This is what NAT does to every packet of a flow.  The IPv4 header checksum is
    recomputed; a UDP checksum is set to 0 ("none", allowed over IPv4), and an ICMP
    echo's identifier plays the part of the port.  IPv6 has no header checksum, but its UDP
    and ICMPv6 checksums cover the addresses (a pseudo-header), so NAT66 must recompute them.
    """
    if packet[0] >> 4 == 6:
        return _rewrite6(packet, src=src, dst=dst, sport=sport, dport=dport)
    p = bytearray(packet)
    ihl = (p[0] & 0xF) * 4
    if src:
        p[12:16] = ipaddress.IPv4Address(src).packed
    if dst:
        p[16:20] = ipaddress.IPv4Address(dst).packed
    p[10:12] = b"\0\0"
    p[10:12] = struct.pack("!H", _ip.checksum(bytes(p[:ihl])))
    if p[9] == _ip.PROTO_UDP:
        if sport is not None:
            p[ihl:ihl + 2] = struct.pack("!H", sport)
        if dport is not None:
            p[ihl + 2:ihl + 4] = struct.pack("!H", dport)
        p[ihl + 6:ihl + 8] = b"\0\0"
    elif p[9] == _ip.PROTO_ICMP and (sport is not None or dport is not None):
        ident = sport if sport is not None else dport
        p[ihl + 4:ihl + 6] = struct.pack("!H", ident)
        p[ihl + 2:ihl + 4] = b"\0\0"
        total = (p[2] << 8) | p[3]
        p[ihl + 2:ihl + 4] = struct.pack("!H", _ip.checksum(bytes(p[ihl:total])))
    return bytes(p)


def _rewrite6(packet: bytes, *, src, dst, sport, dport) -> bytes:
    """:func:`rewrite` for IPv6: the same fields, checksums recomputed over the pseudo-header."""
    p = _ip.IPv6Packet.parse(packet)
    src, dst = src or str(p.src), dst or str(p.dst)
    payload = bytearray(p.payload)
    if p.protocol == _ip.PROTO_UDP and len(payload) >= 8:
        if sport is not None:
            payload[0:2] = struct.pack("!H", sport)
        if dport is not None:
            payload[2:4] = struct.pack("!H", dport)
        payload[6:8] = b"\0\0"
        payload[6:8] = struct.pack("!H", _ip.transport_checksum(src, dst, _ip.PROTO_UDP, bytes(payload)) or 0xFFFF)
    elif p.protocol == _ip.PROTO_ICMPV6 and len(payload) >= 8:
        ident = sport if sport is not None else dport
        if ident is not None:
            payload[4:6] = struct.pack("!H", ident)
        payload[2:4] = b"\0\0"
        payload[2:4] = struct.pack("!H", _ip.transport_checksum(src, dst, _ip.PROTO_ICMPV6, bytes(payload)))
    return _ip.build_ipv6(src, dst, p.protocol, bytes(payload), hop_limit=p.ttl)


class SimSocket:
    """A UDP socket on a simulated host, with the calls the vpnedu daemons use on a real one."""

    def __init__(self, host: "SimHost", port: int = 0, family: int = 4):
        self.host = host
        #: 4 or 6: which family's addresses this socket sends from and receives on (a real
        #: daemon opens one socket per family, as wireguard-go does).
        self.family = family
        self.port = host.bind(self, port)
        self.inbox: deque[tuple[bytes, tuple[str, int]]] = deque(maxlen=4096)
        self.closed = False

    #: The firewall mark of what this socket sends (``SO_MARK``; policy rules may match it).
    mark: int = 0

    def sendto(self, data: bytes, endpoint: tuple[str, int]) -> int:
        self.host.send_udp(self.port, endpoint, data, mark=self.mark)
        return len(data)

    def recvfrom(self, bufsize: int = 65536) -> tuple[bytes, tuple[str, int]]:
        if not self.inbox:
            raise BlockingIOError("no datagram waiting")
        data, addr = self.inbox.popleft()
        return data[:bufsize], addr

    def recvmsg_into(self, buffers, ancbufsize: int = 0, flags: int = 0):
        """:meth:`recvfrom` into the caller's buffer, with the result of ``socket.recvmsg_into``
        (length, no ancillary data, no flags, address): what the datapath calls."""
        data, addr = self.recvfrom(len(buffers[0]))
        n = len(data)
        buffers[0][:n] = data
        return n, [], 0, addr

    def getsockname(self) -> tuple:
        return ("0.0.0.0", self.port) if self.family == 4 else ("::", self.port, 0, 0)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host.unbind(self.port, self.family)


class SimHost:
    """A simulated machine on a :class:`~vpnedu.sim.internet.SimInternet`."""

    def __init__(self, name: str, internet, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.internet = internet
        self.clock = clock
        self.addresses: dict[str, list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]] = {}
        self.routes: list[Route] = []
        #: Policy routing (``ip rule``): the rules besides the main table's, and the other tables.
        self.rules: list[Rule] = []
        self.tables: dict[int, list[Route]] = {}
        self.tuns: dict[str, "MemoryTun"] = {}
        self.forwarding = False
        #: (source network, interface it must not leave by): like an nftables masquerade rule
        #: (of the ``ip`` or ``ip6`` family, by the network's).
        self.masquerade: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        #: An nftables ``output`` chain: each function sees (device, packet, firewall mark) of
        #: every packet about to leave and returns a reason to drop it, or None to let it go.
        self.output_filters: list[Callable[[str, bytes, int], str | None]] = []
        self._flows: dict[tuple, NatFlow] = {}
        self._reverse: dict[tuple, NatFlow] = {}
        self._sockets: dict[tuple[int, int], SimSocket] = {}
        #: UDP services (both families): port -> function(payload, (src, sport)) returning the
        #: reply (or None).
        self.udp_services: dict[int, Callable[[bytes, tuple[str, int]], bytes | None]] = {}
        #: What this host's "applications" logged: who sent each request (the app server's access log).
        self.app_log: deque[str] = deque(maxlen=1000)
        #: ICMP echo replies that arrived for this host (what ``ping`` counts).
        self.echo_replies: deque[bytes] = deque(maxlen=1024)
        #: Bytes and packets per interface and direction, like ``ip -s link``.
        self.counters: Counter[str] = Counter()
        self._next_port = EPHEMERAL_PORTS[0]

    # ------------------------------------------------------------------ configuration
    def add_address(self, dev: str, cidr: str | ipaddress.IPv4Interface) -> None:
        """Like ``ip addr add CIDR dev DEV``: also adds the connected route for its subnet."""
        itf = ipaddress.ip_interface(cidr)
        self.addresses.setdefault(dev, []).append(itf)
        self.internet.register(self, itf.ip, dev)
        if itf.network.prefixlen < itf.max_prefixlen:
            self.add_route(str(itf.network), None, dev)

    def remove_device(self, dev: str) -> None:
        """The interface disappears, with its addresses and every route through it (as in Linux)."""
        for itf in self.addresses.pop(dev, []):
            self.internet.unregister(itf.ip)
        self.routes = [r for r in self.routes if r.dev != dev]
        self.tables = {t: [r for r in rs if r.dev != dev] for t, rs in self.tables.items()}
        self.tuns.pop(dev, None)

    def _table(self, table: int | None) -> list[Route]:
        if table is None or table == MAIN_TABLE:
            return self.routes
        return self.tables.setdefault(table, [])

    def add_route(self, dst: str, gateway: str | None, dev: str, table: int | None = None) -> Route:
        """Like ``ip route add DST [via GATEWAY] dev DEV [table N]``."""
        if dev not in self.addresses and dev not in self.tuns:
            raise VpneduError(f"[{self.name}] no interface {dev!r}", "create it first")
        net = _net(dst)
        # As ``ip route`` names them: "default", a host route by its address, else the prefix.
        # The IPv6 default is kept as "::/0" here (one list holds both families) and shown as
        # "default" by :meth:`table`.
        name = ("default" if net.version == 4 else "::/0") if net.prefixlen == 0 else (
            str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net))
        route = Route(name, gateway, dev)
        routes = self._table(table)
        if route not in routes:
            routes.append(route)
        return route

    def remove_route(self, route: Route, table: int | None = None) -> None:
        if table is None or table == MAIN_TABLE:
            self.routes = [r for r in self.routes if r != route]
        elif table in self.tables:
            self.tables[table] = [r for r in self.tables[table] if r != route]

    def add_rule(self, rule: Rule) -> None:
        """Like ``ip [-6] rule add`` (the rule's ``family`` says which)."""
        self.rules.append(rule)

    def remove_rule(self, rule: Rule) -> None:
        self.rules = [r for r in self.rules if r != rule]

    def rule_table(self, family: int = 4) -> list[str]:
        """The policy rules, as ``ip [-6] rule`` lists them (the kernel's own included)."""
        rows = [(0, "from all lookup local")]
        for r in self.rules:
            if r.family != family:
                continue
            what = f"{'not ' if r.invert else ''}from all fwmark {r.fwmark:#x}" if r.fwmark is not None else "from all"
            table = "main" if r.table == MAIN_TABLE else str(r.table)
            extra = f" suppress_prefixlength {r.suppress_prefixlength}" if r.suppress_prefixlength is not None else ""
            rows.append((r.priority or 32000, f"{what} lookup {table}{extra}"))
        rows += [(32766, "from all lookup main"), (32767, "from all lookup default")]
        return [f"{prio}:\t{text}" for prio, text in sorted(rows, key=lambda x: x[0])]

    def table_routes(self, table: int, family: int = 4) -> list[Route]:
        """``ip [-6] route show table N``."""
        return _shown([r for r in self.tables.get(table, []) if _net(r.dst).version == family])

    def table(self, family: int = 4) -> list[Route]:
        """The main routing table, as ``ip route`` (``family=6``: ``ip -6 route``) lists it:
        default route first."""
        rows = [r for r in self.routes if _net(r.dst).version == family]
        return _shown(sorted(rows, key=lambda r: (_net(r.dst).prefixlen != 0, _net(r.dst).prefixlen, r.dst)))

    def lookup(self, address: str | ipaddress.IPv4Address, mark: int = 0) -> Route | None:
        """Which route the host uses for ``address`` (sent with firewall mark ``mark``): the rules
        in priority order, as the kernel's policy routing tries them (ip-rule(8)), each looking
        in its table for the most specific route (longest prefix); a ``suppress_prefixlength N``
        rule refuses an answer of prefix length N or less.  Then the main table."""
        a = ipaddress.ip_address(address)
        for rule in sorted(self.rules, key=lambda r: r.priority or 32000):
            if rule.family != a.version:
                continue
            if rule.fwmark is not None and (mark == rule.fwmark) == rule.invert:
                continue
            best = _longest(self._table(rule.table), a)
            if best is None:
                continue
            if rule.suppress_prefixlength is not None and _net(best.dst).prefixlen <= rule.suppress_prefixlength:
                continue
            return best
        return _longest(self.routes, a)

    def route_to(self, address: str, mark: int = 0) -> Route:
        """Like ``ip route get ADDRESS [mark M]`` (the client's route planner asks this)."""
        r = self.lookup(address, mark)
        if r is None:
            raise VpneduError(f"[{self.name}] no route to {address}", "add a default route")
        return Route(address, r.gateway, r.dev)

    def own(self, address: str | ipaddress.IPv4Address) -> bool:
        a = ipaddress.ip_address(address)
        return any(itf.ip == a for itfs in self.addresses.values() for itf in itfs)

    def source_for(self, dev: str, family: int = 4) -> str:
        """The source address for packets of ``family`` leaving by ``dev``: its first address
        of that family."""
        itfs = [i for i in self.addresses.get(dev, []) if i.version == family]
        if not itfs:
            raise VpneduError(f"[{self.name}] interface {dev} has no IPv{family} address")
        return str(itfs[0].ip)

    def source_address(self, destination: str) -> str:
        r = self.route_to(destination)
        return self.source_for(r.dev, ipaddress.ip_address(destination).version)

    # ------------------------------------------------------------------ sockets
    def bind(self, sock: SimSocket, port: int) -> int:
        """A port for ``sock`` (of its family; 0: a free ephemeral one), as bind(2) gives it."""
        family = sock.family
        if port == 0:
            while (family, self._next_port) in self._sockets:
                self._next_port += 1
            port = self._next_port
            self._next_port = self._next_port + 1 if self._next_port < EPHEMERAL_PORTS[1] else EPHEMERAL_PORTS[0]
        if (family, port) in self._sockets or port in self.udp_services:
            raise VpneduError(f"[{self.name}] UDP port {port} is already in use", "choose another port")
        self._sockets[(family, port)] = sock
        return port

    def unbind(self, port: int, family: int = 4) -> None:
        self._sockets.pop((family, port), None)

    def send_udp(self, sport: int, endpoint: tuple[str, int], payload: bytes, mark: int = 0) -> None:
        dst, dport = endpoint[0], endpoint[1]
        family = ipaddress.ip_address(dst).version
        route = self.lookup(dst, mark)
        if route is None or not any(i.version == family for i in self.addresses.get(route.dev, [])):
            self._drop(b"", "-", f"no route to {dst}")
            return
        self.send_ip(_ip.build_udp(self.source_for(route.dev, family), sport, dst, dport, payload), mark=mark)

    def ping(self, destination: str, ident: int = 0x7e57, seq: int = 1, payload: bytes = b"vpnedu sim ping",
             source: str | None = None, dev: str | None = None) -> bytes:
        """Send one ICMP echo request (what ``ping -c 1`` sends; to an IPv6 address ICMPv6's);
        returns the packet."""
        family = ipaddress.ip_address(destination).version
        source = source or (self.source_for(dev, family) if dev else self.source_address(destination))
        pkt = _ip.build_icmp_echo(source, destination, ident, seq, payload)
        self.send_ip(pkt, dev=dev)
        return pkt

    # ------------------------------------------------------------------ the datapath
    def send_ip(self, packet: bytes, forwarded: bool = False, in_dev: str | None = None, mark: int = 0,
                dev: str | None = None) -> None:
        """Output (or forward) a packet: route it, masquerade it if a rule says so, transmit it.
        ``dev``: sent by a socket bound to that interface (``SO_BINDTODEVICE``, ``ping -I eth0``):
        it leaves there, whatever the routing rules say -- by that interface's routes only."""
        dst = ipaddress.ip_address(_ip.destination_address(packet))
        if self.own(dst) and not forwarded:
            self.receive(packet, "lo")
            return
        if dev is not None:
            route = _longest([r for r in self.routes if r.dev == dev], dst)
        else:
            route = self.lookup(dst, mark)
        if route is None:
            self._drop(packet, in_dev or "-", f"no route to {dst}")
            return
        if forwarded:
            packet = self._masquerade(packet, route.dev)
            if packet is None:
                return
        for check in self.output_filters:
            why = check(route.dev, packet, mark)
            if why:
                self._drop(packet, route.dev, why)
                return
        self.transmit(route.dev, packet)

    def transmit(self, dev: str, packet: bytes) -> None:
        self.counters[f"{dev}.tx_bytes"] += len(packet)
        self.counters[f"{dev}.tx_packets"] += 1
        tun = self.tuns.get(dev)
        if tun is not None:
            self.internet.trace(self, dev, "tun->program", packet, "the kernel routed it into the TUN device")
            tun.queue(packet)
        else:
            self.internet.trace(self, dev, "out", packet)
            self.internet.put(self, packet)

    def receive(self, packet: bytes, dev: str) -> None:
        """Input: a packet arrived on ``dev`` (``eth0``, a TUN device, or ``lo``)."""
        self.counters[f"{dev}.rx_bytes"] += len(packet)
        self.counters[f"{dev}.rx_packets"] += 1
        if dev != "lo":
            self.internet.trace(self, dev, "in" if dev not in self.tuns else "program->tun", packet)
        try:
            p = _ip.parse(packet)
        except Exception as e:  # not IP: nothing here handles it
            self._drop(packet, dev, f"not an IP packet: {e}")
            return
        packet = self._unmasquerade(packet, p)
        if packet is None:
            return
        dst = ipaddress.ip_address(_ip.destination_address(packet))
        if self.own(dst):
            self._deliver_local(_ip.parse(packet))
        elif self.forwarding:
            self.send_ip(packet, forwarded=True, in_dev=dev)
        else:
            self._drop(packet, dev, "not for this host and forwarding is off")

    def _deliver_local(self, p: _ip.IPv4Packet | _ip.IPv6Packet) -> None:
        if p.protocol in (_ip.PROTO_ICMP, _ip.PROTO_ICMPV6) and len(p.payload) >= 8:
            request, reply = _ip.ECHO_TYPES[p.src.version]
            icmp_type = p.payload[0]
            if icmp_type == request:  # echo request: answer it, as every Linux host does
                ident, seq = struct.unpack_from("!HH", p.payload, 4)
                what = "ICMP" if p.src.version == 4 else "ICMPv6"
                self.app_log.append(f"{p.src} {what} echo request id={ident} seq={seq}")
                self.send_ip(_ip.build_icmp_echo(str(p.dst), str(p.src), ident, seq, p.payload[8:], reply=True))
            elif icmp_type == reply:
                self.echo_replies.append(bytes(p.payload))
            return
        if p.protocol == _ip.PROTO_UDP and len(p.payload) >= 8:
            sport, dport = struct.unpack_from("!HH", p.payload)
            data = p.payload[8:]
            sock = self._sockets.get((p.src.version, dport))
            if sock is not None:
                sock.inbox.append((data, (str(p.src), sport)))
                return
            service = self.udp_services.get(dport)
            if service is not None:
                reply = service(data, (str(p.src), sport))
                if reply is not None:
                    self.send_ip(_ip.build_udp(str(p.dst), dport, str(p.src), sport, reply))
                return
            self._drop(p, "-", f"nothing listens on UDP port {dport}")

    def _drop(self, packet, dev: str, why: str) -> None:
        self.counters["dropped"] += 1
        raw = packet if isinstance(packet, bytes) else b""
        self.internet.trace(self, dev, "drop", raw, why)

    # ------------------------------------------------------------------ NAT (masquerade)
    def _masquerade(self, packet: bytes, out_dev: str) -> bytes | None:
        src = ipaddress.ip_address(_ip.source_address(packet))
        rule = next((r for r in self.masquerade
                     if r[0].version == src.version and src in r[0] and out_dev != r[1]), None)
        if rule is None:
            return packet
        p = _ip.parse(packet)
        proto, ihl = p.protocol, p.header_length
        ports = _ports(packet, proto, ihl)
        if ports is None:
            self._drop(packet, out_dev, "the simulated NAT handles only UDP and ICMP echo")
            return None
        dst = str(p.dst)
        key = (proto, str(src), ports[0], dst, ports[1])
        flow = self._flows.get(key)
        public = self.source_for(out_dev, src.version)
        if flow is None:
            port = ports[0]
            while (proto, public, port, dst, ports[1]) in self._reverse:
                port = port + 1 if port < 65535 else 1024
            name = {_ip.PROTO_UDP: "udp", _ip.PROTO_ICMP: "icmp", _ip.PROTO_ICMPV6: "icmpv6"}[proto]
            flow = NatFlow(name, (str(src), ports[0]), (public, port), (dst, ports[1]), self.clock())
            self._flows[key] = flow
            self._reverse[(proto, public, port, dst, ports[1])] = flow
        flow.bytes_up += len(packet)
        new = rewrite(packet, src=public, sport=flow.proxy[1] if proto == _ip.PROTO_UDP else None,
                      dport=None)
        if proto in (_ip.PROTO_ICMP, _ip.PROTO_ICMPV6) and flow.proxy[1] != ports[0]:
            new = rewrite(new, sport=flow.proxy[1])
        self.internet.trace(self, out_dev, "nat", new, f"masquerade: source {src}:{ports[0]} -> "
                                                        f"{public}:{flow.proxy[1]}")
        return new

    def _unmasquerade(self, packet: bytes, p: _ip.IPv4Packet | _ip.IPv6Packet) -> bytes | None:
        if not self._reverse:
            return packet
        ports = _ports(packet, p.protocol, p.header_length)
        if ports is None:
            return packet
        # A reply comes from the destination's port to our public address and port.
        key = (p.protocol, str(p.dst), ports[1], str(p.src), ports[0])
        flow = self._reverse.get(key)
        if flow is None:
            return packet
        flow.bytes_down += len(packet)
        flow.state = "established"
        cport = flow.client[1]
        new = rewrite(packet, dst=flow.client[0], dport=cport if p.protocol == _ip.PROTO_UDP else None,
                      sport=cport if p.protocol in (_ip.PROTO_ICMP, _ip.PROTO_ICMPV6) else None)
        return new

    def flows(self) -> list[FlowRow]:
        """The NAT's flow table (``conntrack -L``), as rows of vpnedu's flow table."""
        now = self.clock()
        return [f.row(now) for f in self._flows.values()]

    def clear_flows(self) -> None:
        self._flows.clear()
        self._reverse.clear()


def _net(dst: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False)


def _shown(routes: list[Route]) -> list[Route]:
    """Routes as ``ip -6 route`` names them: the IPv6 default as "default"."""
    return [Route("default", r.gateway, r.dev) if r.dst == "::/0" else r for r in routes]


def _longest(routes: list[Route], a) -> Route | None:
    """The most specific route of ``routes`` that holds address ``a`` (longest prefix match,
    among the routes of ``a``'s family: ``ipaddress`` would find an IPv6 address "in"
    0.0.0.0/0)."""
    best = None
    for r in routes:
        n = _net(r.dst)
        if n.version == a.version and a in n and (best is None or n.prefixlen > _net(best.dst).prefixlen):
            best = r
    return best
