"""Exercise: a NAT translation table for UDP (what the VPN server does for its clients).

Clients' packets leave the tunnel with private sources (10.0.0.x) that the
internet cannot answer.  The server rewrites each one to its own public address
and a public port, remembers the mapping, and rewrites the replies back
(:mod:`vpnedu.net.nat` asks the kernel's nftables to do it; the simulated lab
does it in :class:`vpnedu.sim.host.SimHost`).  The behaviour asked for here
follows RFC 4787's rules for UDP:

* **endpoint-independent mapping** (REQ-1): one client address and port keep
  one public port, whatever destination they send to;
* **address-and-port-dependent filtering**: a reply is let in only from an
  endpoint the client has sent to -- the NAT is also a firewall.  This is the
  strictest filtering of RFC 4787 section 5 and what Linux's masquerade does;
  REQ-8 recommends endpoint-independent filtering for transparency, or
  address-dependent filtering where stricter filtering matters;
* every mapping gets its **own public port**: two clients that both use source
  port 5353 must not share one;
* mappings **expire** after ``idle_timeout`` seconds without traffic (REQ-5),
  outbound and accepted inbound packets both keep them alive (REQ-6), and an
  expired mapping's port may be given out again; when every port is taken, a
  new flow gets none (its packet is dropped).

The student writes ``UdpNat``.  The check drives it with simulated traffic
traces (hidden ones included) against a model of these rules -- the model does
not prescribe *which* free port is chosen -- and then installs it as the UDP
NAT of the simulated VPN server and sends real traffic from the client through
the tunnel to the app server and back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import shutil
import struct

from ..packet import ip as _ip
from .checking import Case, expect

TITLE = "UDP NAT table"
PARTS = ("nat",)
PUBLIC = "203.0.113.2"


class Model:
    """The rules above, watching the student's table: it learns which port the student chose."""

    def __init__(self, nat, ports: range, timeout: float, what: str):
        self.nat, self.ports, self.timeout, self.what = nat, ports, timeout, what
        self.maps: dict[tuple[str, int], dict] = {}   # client -> {"port", "last", "peers"}

    def _expire(self, now: float) -> None:
        for k in [k for k, m in self.maps.items() if now - m["last"] >= self.timeout]:
            del self.maps[k]

    def out(self, client, remote, now: float, step: str = ""):
        self._expire(now)
        got = self.nat.outbound(client, remote, now)
        where = f"{self.what}{step}: outbound {client[0]}:{client[1]} -> {remote[0]}:{remote[1]} at t={now:g}"
        m = self.maps.get(client)
        used = {x["port"] for k, x in self.maps.items() if k != client}
        if m is None and len(used) >= len(self.ports):
            expect(got is None, f"{where}: every public port is in use, yet you returned {got!r}",
                   "when no port is free, return None: the packet is dropped")
            return None
        expect(isinstance(got, tuple) and len(got) == 2, f"{where}: returned {got!r}, expected (public_ip, port)",
               "return the (address, port) the packet leaves with")
        ip, port = got
        expect(str(ip) == PUBLIC, f"{where}: public address {ip}, expected {PUBLIC}")
        if m is not None:
            expect(port == m["port"], f"{where}: got port {port}, but this client's mapping has port {m['port']}",
                   "endpoint-independent mapping: one client address+port keep one public port, to any "
                   "destination, until the mapping expires")
        else:
            expect(port in self.ports, f"{where}: port {port} is outside the NAT's range")
            expect(port not in used, f"{where}: port {port} is already mapped to another client",
                   "two clients (even with the same source port) need two public ports")
            m = self.maps[client] = {"port": port, "peers": set()}
        m["last"] = now
        m["peers"].add(remote)
        return got

    def back(self, port: int, remote, now: float, step: str = ""):
        self._expire(now)
        got = self.nat.inbound(port, remote, now)
        where = f"{self.what}{step}: inbound to port {port} from {remote[0]}:{remote[1]} at t={now:g}"
        owner = next((k for k, m in self.maps.items() if m["port"] == port), None)
        if owner is None:
            expect(got is None, f"{where}: no live mapping has this port, yet you returned {got!r}",
                   "unknown or expired ports: return None (drop), never raise")
            return None
        m = self.maps[owner]
        if remote not in m["peers"]:
            expect(got is None, f"{where}: the client never sent to {remote[0]}:{remote[1]}, yet you let it in",
                   "filtering: only endpoints the client sent to may answer")
            return None
        expect(got is not None and tuple(got) == owner, f"{where}: returned {got!r}, expected {owner}",
               "translate the reply back to the client's own address and port")
        m["last"] = now
        return got


def _model(nat_cls, ports=range(40000, 40100), timeout=30.0, what=""):
    return Model(nat_cls(PUBLIC, ports, timeout), ports, timeout, what)


A, B, APP, DNS = ("10.0.0.2", 5353), ("10.0.0.3", 5353), ("192.0.2.80", 8080), ("192.0.2.53", 53)


def _first(nat):
    _model(nat, what="one client").out(A, APP, 0)


def _same_port(nat):
    m = _model(nat, what="one client, two destinations")
    m.out(A, APP, 0)
    m.out(A, APP, 1)
    m.out(A, DNS, 2)


def _reply(nat):
    m = _model(nat, what="request and reply")
    _, port = m.out(A, APP, 0)
    m.back(port, APP, 0.5)


def _filtering(nat):
    m = _model(nat, what="filtering")
    _, port = m.out(A, APP, 0)
    m.back(port, ("198.18.0.66", 8080), 1)
    m.back(port, (APP[0], 9999), 1)
    m.back(port, APP, 1)


def _unknown(nat):
    m = _model(nat, what="unknown ports")
    m.back(40050, APP, 0)
    m.back(51820, APP, 0)
    _, port = m.out(A, APP, 1)
    m.back(port + 1 if port + 1 in m.ports else port - 1, APP, 2)


def _two_clients(nat):
    m = _model(nat, what="two clients with source port 5353")
    _, pa = m.out(A, DNS, 0)
    _, pb = m.out(B, DNS, 0)
    m.back(pb, DNS, 1)
    m.back(pa, DNS, 1)


def _expiry(nat):
    m = _model(nat, timeout=30, what="idle timeout 30 s")
    _, port = m.out(A, APP, 0)
    m.back(port, APP, 29.9)
    m.back(port, APP, 59.0)    # kept alive by the reply at 29.9
    m.back(port, APP, 89.0)    # idle since 59.0: expired
    m.out(A, APP, 100)          # a fresh mapping


def _keepalive(nat):
    m = _model(nat, timeout=30, what="outbound traffic keeps a mapping")
    _, port = m.out(A, APP, 0)
    for t in (20, 40, 60, 80):
        m.out(A, APP, t)
    m.back(port, APP, 105)
    m.back(port, APP, 136)


def _exhaustion(nat):
    m = _model(nat, ports=range(40000, 40002), timeout=10, what="two ports only")
    m.out(A, APP, 0)
    m.out(B, APP, 1)
    m.out(("10.0.0.4", 1000), APP, 2)
    m.out(("10.0.0.4", 1000), APP, 10.5)   # A's mapping expired at 10: its port is free again
    m.out(A, APP, 11)                      # and B's at 11 (idle for 10 s): A gets a port again


def _trace(seed: int):
    def run(nat):
        rng = random.Random(seed)
        m = _model(nat, ports=range(41000, 41008), timeout=10, what=f"hidden trace {seed}")
        clients = [(f"10.0.0.{rng.randint(2, 6)}", rng.choice([5353, 40000, 12345])) for _ in range(12)]
        remotes = [("192.0.2.80", 8080), ("192.0.2.53", 53), ("198.18.0.9", 443), ("192.0.2.80", 53)]
        now = 0.0
        for i in range(3000):
            now += rng.choice([0, 0.1, 0.5, 1, 3, 11])
            if rng.random() < 0.55:
                m.out(rng.choice(clients), rng.choice(remotes), now, f" step {i}")
            else:
                live = [x["port"] for x in m.maps.values()]
                port = rng.choice(live) if live and rng.random() < 0.8 else rng.choice(list(m.ports) + [51820])
                m.back(port, rng.choice(remotes), now, f" step {i}")
    return run


# -------------------------------------------------------------------- inside the simulated VPN server
@contextlib.contextmanager
def student_nat_on(host, nat):
    """``host`` (the lab's server) translates UDP with ``nat`` instead of its own masquerade table."""
    from ..sim.host import rewrite
    real_out, real_in = host._masquerade, host._unmasquerade
    public = {str(i.ip) for itfs in host.addresses.values() for i in itfs}

    def masquerade(packet: bytes, out_dev: str):
        src = ipaddress.IPv4Address(packet[12:16])
        if packet[9] != _ip.PROTO_UDP or not any(src in net and out_dev != dev for net, dev in host.masquerade):
            return real_out(packet, out_dev)
        ihl = (packet[0] & 0xF) * 4
        sport, dport = struct.unpack_from("!HH", packet, ihl)
        got = nat.outbound((str(src), sport), (str(ipaddress.IPv4Address(packet[16:20])), dport), host.clock())
        if got is None:
            host._drop(packet, out_dev, "your NAT has no free port")
            return None
        new = rewrite(packet, src=str(got[0]), sport=int(got[1]))
        host.internet.trace(host, out_dev, "nat", new, f"your NAT: source {src}:{sport} -> {got[0]}:{got[1]}")
        return new

    def unmasquerade(packet: bytes, p):
        if p.protocol != _ip.PROTO_UDP or str(p.dst) not in public:
            return real_in(packet, p)
        sport, dport = struct.unpack_from("!HH", packet, p.header_length)
        got = nat.inbound(dport, (str(p.src), sport), host.clock())
        if got is None:
            return packet   # not a mapping: for the server itself (its WireGuard port), or dropped there
        return rewrite(packet, dst=str(got[0]), dport=int(got[1]))

    host._masquerade, host._unmasquerade = masquerade, unmasquerade
    try:
        yield
    finally:
        host._masquerade, host._unmasquerade = real_out, real_in


def _running(nat):
    from ..course.simulated import SimLab
    from ..sim.topology import APP_ADDRESS, APP_UDP_PORT, SERVER_PUBLIC
    lab = SimLab()
    try:
        lab.start_server()
        table = nat(SERVER_PUBLIC, range(40000, 40100), 30.0)
        with student_nat_on(lab.hosts["server"], table):
            lab.start_client()
            for i in range(2):
                reply = lab.udp("client", APP_ADDRESS, APP_UDP_PORT, f"lab 5 request {i}".encode())
                expect(reply is not None, "through the VPN with your NAT on the server, a UDP request to the app "
                       "server got no reply", "the reply comes back to the public port: inbound() must map it "
                       "to the client")
                expect(f"your address is {SERVER_PUBLIC}".encode() in reply,
                       f"the app server answered {reply!r}: it should have seen the server's address")
            ping = lab.ping("client", "10.0.0.1", count=1)
            expect(ping.ok, "with your NAT installed, the tunnel itself stopped working",
                   "packets to the server's own WireGuard port (51820) are not in your table: return None")
    finally:
        lab.down()
        shutil.rmtree(lab.dir, ignore_errors=True)


def cases() -> list[Case]:
    return [
        Case("a first packet gets a public port", _first, "allocate a free port from the range"),
        Case("one client keeps one port (to any destination)", _same_port,
             "key the mapping by the client's (address, port)"),
        Case("a reply is translated back", _reply, "keep a reverse map: public port -> client"),
        Case("replies only from endpoints the client sent to", _filtering,
             "remember, per mapping, the (address, port) pairs the client sent to"),
        Case("unknown ports are dropped, not crashed on", _unknown, "return None for a port with no mapping"),
        Case("two clients with the same source port", _two_clients, "the key is (address, port), not the port"),
        Case("idle mappings expire", _expiry, "a mapping idle for idle_timeout seconds or more is gone"),
        Case("traffic keeps a mapping alive", _keepalive, "every packet of the mapping refreshes its time"),
        Case("port exhaustion and reuse", _exhaustion,
             "expire idle mappings before allocating; return None when every port is in use"),
        Case("hidden traffic trace 1", _trace(4787), "compare with the rule named in the message"),
        Case("hidden traffic trace 2", _trace(3022), "compare with the rule named in the message"),
        Case("your NAT on the running VPN server", _running,
             "the server's UDP masquerade is now your table: client -> tunnel -> NAT -> app server and back"),
    ]
