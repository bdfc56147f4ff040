"""SOCKS5 UDP ASSOCIATE (RFC 1928 sections 4, 6 and 7): datagrams relayed for a tunnel peer.

CONNECT (:mod:`.socks5`) relays one TCP connection.  UDP has no connections, so a client that
wants datagrams relayed (a DNS query, a game, QUIC) asks for an *association* instead, on an
ordinary SOCKS5 TCP connection (greeting, login, then the request with ``CMD=3``)::

    client: VER=5 CMD=3 RSV=0 ATYP DST.ADDR DST.PORT     (the address it will send from, or zeros)
    server: VER=5 REP=0 RSV=0 ATYP BND.ADDR BND.PORT     (where to send the datagrams: the relay)

From then on the TCP connection carries nothing; it only *holds* the association: "A UDP
association terminates when the TCP connection that the UDP ASSOCIATE request arrived on
terminates" (section 7).  Each datagram the client sends to ``BND.ADDR:BND.PORT`` starts with
a header naming where its payload goes (section 7)::

    +-----+------+------+----------+----------+----------+
    | RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    +-----+------+------+----------+----------+----------+
    |  2  |  1   |  1   | Variable |    2     | Variable |
    +-----+------+------+----------+----------+----------+

``RSV`` is ``00 00``, ``ATYP``/``DST.ADDR`` as in a request (an IPv4 or IPv6 address, or a name
that the *server* resolves), ``FRAG`` a fragment number (0: a whole datagram).  The server sends
``DATA`` on to the destination from a socket of its own, and every reply back to the client with
the same header in front, the *source* of the reply in ``DST.ADDR:DST.PORT``::

    client 10.0.0.2:5353 --[hdr 192.0.2.1:53 | query]--> relay 10.0.0.1:40112
                                     server 203.0.113.2:51044 --[query]--> 192.0.2.1:53
    client 10.0.0.2:5353 <--[hdr 192.0.2.1:53 | answer]-- relay 10.0.0.1:40112
                                     server 203.0.113.2:51044 <--[answer]-- 192.0.2.1:53

What this relay accepts, and what it drops (silently -- a datagram is never answered with an
error -- but counted, with a ``proxy.socks5.udp.dropped`` event saying why):

* **Only the association's client.**  The relay is bound to the tunnel address the control
  connection arrived on (never a wildcard), and takes datagrams only from that connection's
  source address: the tunnel peer the connection authenticated.  If the request named a port
  (``DST.PORT`` non-zero), only from that port, as section 7 allows; if not, the first valid
  datagram's source port becomes the association's, and other ports are dropped.  (``DST.ADDR``
  is not used: the control connection's source is what the tunnel vouches for.)
* **Well-formed headers.**  Truncated, ``RSV`` not zero, an unknown ``ATYP``, a name that is not
  a host name, port 0: dropped.  ``FRAG`` not zero is dropped too: an implementation that does
  not support fragmentation "MUST drop any datagram whose FRAG field is other than X'00'".
* **Allowed destinations.**  The same rule as CONNECT (:func:`.socks5_address.allowed_destination`): not
  the server's loopback, not unspecified, multicast or link-local; for a name, every address it
  resolves to.
* **Replies only from where the client sent.**  A datagram arriving at the server's socket from
  an address and port the client has not sent to is dropped (a stranger cannot reach the client
  through the relay just by guessing the server's port).

Each destination is a flow in the :class:`~.flows.FlowTable` (proto ``socks5-udp``), so
``vpnedu status --flows`` shows ``client -> the server's end -> destination`` per destination,
with bytes each way (the payload, not the header).  The association ends when its control
connection closes (end of file or an error), when nothing has been relayed either way for
:data:`ASSOCIATION_IDLE` seconds (then the server closes the control connection, so the client
learns it), or when the server stops; its sockets are closed and each flow closes with its byte
counts and the reason.

**Bounded.**  Per association: three sockets at most (the relay, and one per IP family towards
the destinations, made when first needed); :data:`MAX_DESTINATIONS` destinations remembered (a
new one beyond that makes the one silent longest forgotten: its flow closes, its replies are
dropped from then on); :data:`MAX_NAMES` resolved names kept for :data:`NAME_TTL` seconds;
:data:`MAX_WAITING` datagrams waiting for a name to resolve (more are dropped).  Per server:
:data:`MAX_ASSOCIATIONS` associations (one more is answered 01, general failure).

The header functions are pure (bytes in, bytes out: :func:`parse_udp`, :func:`build_udp`);
:class:`Association` does the IO, with the event loop's readers like :mod:`.udp`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections import OrderedDict
from dataclasses import dataclass

from . import socks5_address as sa
from .flows import Flow, FlowTable, fmt

#: The largest UDP payload (IPv4: 65535 - 20 - 8; what arrives never exceeds it).
MAX_DATAGRAM = 65535
#: Per association: this many destinations remembered (then the one silent longest is forgotten).
MAX_DESTINATIONS = 64
#: Per association: this many resolved names cached, each for NAME_TTL seconds.
MAX_NAMES = 64
NAME_TTL = 30.0
#: Per association: at most this many datagrams waiting for their name to resolve.
MAX_WAITING = 32
#: Per association: a ``proxy.socks5.udp.dropped`` event for the first this many drops (all are counted).
MAX_DROP_EVENTS = 32
#: Seconds without a datagram relayed either way before the association ends (UDP's idle
#: timeout in the transparent proxy, ``DEFAULT_IDLE["udp"]``, is the same).
ASSOCIATION_IDLE = 30.0
#: Per server: at most this many associations at once.
MAX_ASSOCIATIONS = 256



def routable(address: str) -> bool:
    """Whether the server has a route to ``address``: connecting a UDP socket sends nothing, it
    only asks the routing table (ENETUNREACH when there is no route)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))
        except OSError:
            return False
    return True

class UdpHeaderError(ValueError):
    """A datagram this relay drops; ``reason``: why, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class UdpDatagram:
    host: str           #: an IP address as text, or the domain name to resolve
    port: int
    atyp: int
    data: bytes


# ---------------------------------------------------------------------------- pure: the header
def parse_udp(data: bytes) -> UdpDatagram:
    """A datagram from the client (section 7): ``RSV(2)=0 FRAG ATYP DST.ADDR DST.PORT DATA`` ->
    :class:`UdpDatagram`.  Unlike the TCP messages nothing more will arrive, so too short is an
    error, as is every other header this relay drops (:class:`UdpHeaderError`, with the reason)."""
    if len(data) < 4:
        raise UdpHeaderError(f"{len(data)} bytes: shorter than a header")
    if data[0] or data[1]:
        raise UdpHeaderError(f"RSV is {data[0]:02x}{data[1]:02x}, not 0000")
    if data[2]:
        raise UdpHeaderError(f"FRAG {data[2]}: fragments are not supported (RFC 1928 section 7: dropped)")
    atyp = data[3]
    if atyp == sa.ATYP_IPV4:
        start, end = 4, 8
    elif atyp == sa.ATYP_IPV6:
        start, end = 4, 20
    elif atyp == sa.ATYP_DOMAIN:
        if len(data) < 5:
            raise UdpHeaderError("truncated: no name length")
        start, end = 5, 5 + data[4]
    else:
        raise UdpHeaderError(f"address type {atyp}")
    if len(data) < end + 2:
        raise UdpHeaderError(f"truncated: {len(data)} bytes, the header needs {end + 2}")
    if atyp == sa.ATYP_DOMAIN:
        raw = bytes(data[start:end])
        host = sa.domain_name(raw)
        if host is None:
            raise UdpHeaderError(f"{raw[:64]!r} is not a domain name")
    else:
        host = str(ipaddress.ip_address(bytes(data[start:end])))
    port = int.from_bytes(data[end:end + 2], "big")
    if port == 0:
        raise UdpHeaderError("destination port 0")
    return UdpDatagram(host, port, atyp, bytes(data[end + 2:]))


def build_udp(host: str, port: int, data: bytes = b"", frag: int = 0) -> bytes:
    """The header (section 7) in front of ``data``: what the server sends the client with each
    reply (``host``: the reply's source address), and what a client sends (``host`` may be a
    name).  ``frag`` is only for building what this relay drops."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("ascii")
        if not 0 < len(name) <= 255:
            raise ValueError(f"a name of {len(name)} bytes does not fit ATYP 3") from None
        addr = bytes([sa.ATYP_DOMAIN, len(name)]) + name
    else:
        addr = bytes([sa.ATYP_IPV4 if ip.version == 4 else sa.ATYP_IPV6]) + ip.packed
    return bytes([0, 0, frag]) + addr + port.to_bytes(2, "big") + data


def normal_address(address: str) -> str:
    """An address as the kernel writes a datagram's source (an IPv4-mapped IPv6 address as IPv4:
    the relay sends to it from its IPv4 socket), so a reply finds the destination it answers."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def open_relay(address: str) -> socket.socket:
    """The association's relay socket: UDP on exactly ``address`` (the tunnel address the
    control connection arrived on), an ephemeral port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, 0))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


# ---------------------------------------------------------------------------- the IO
class Association:
    """One UDP association: the relay socket, the sockets towards destinations, the flows.

    ``relay``: the bound relay socket (:func:`open_relay`); ``client_ip``: the control
    connection's source; ``client_port``: the request's ``DST.PORT`` (0: the first datagram's
    source port is taken); ``peer``: the tunnel peer, for the flows and events."""

    def __init__(self, table: FlowTable, relay: socket.socket, client_ip: str, client_port: int,
                 peer: str | None, resolve_timeout: float = 10.0):
        self.table, self.relay, self.peer = table, relay, peer
        self.client_ip, self.client_port = normal_address(client_ip), client_port
        self.resolve_timeout = resolve_timeout
        self.bound = relay.getsockname()[:2]
        #: The sockets towards destinations, by address family (made when first needed).
        self.upstream: dict[int, socket.socket] = {}
        #: (destination address, port) -> its flow, the one silent longest first.
        self.destinations: OrderedDict[tuple[str, int], Flow] = OrderedDict()
        self._names: OrderedDict[str, tuple[float, asyncio.Task]] = OrderedDict()
        self._waiting: set[asyncio.Task] = set()
        #: How many datagrams were dropped (the first MAX_DROP_EVENTS with an event each).
        self.dropped = 0
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self._ended: asyncio.Future[str] = self._loop.create_future()
        #: The task that holds the association (its control connection's).
        self.task: asyncio.Task | None = None

    # -------------------------------------------------------------- life
    def start(self) -> None:
        self._loop.add_reader(self.relay.fileno(), self._on_client)

    async def hold(self, reader: asyncio.StreamReader, idle: float) -> str:
        """Wait while the control connection lasts: returns why the association ends (its end
        of file or error, or ``idle`` seconds without a datagram relayed).  Bytes on it are
        read and ignored (section 7 gives it nothing more to carry)."""
        self.task = asyncio.current_task()
        while True:
            left = self.last + idle - self._loop.time()
            if left <= 0:
                return f"idle {idle:g} s"
            read = asyncio.ensure_future(reader.read(4096))
            done, _ = await asyncio.wait({read, self._ended}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                read.cancel()           # a StreamReader loses nothing to a cancelled read
                if self._ended.done():
                    return self._ended.result()
                continue
            try:
                data = read.result()
            except OSError as e:
                return f"control connection error ({e.strerror or type(e).__name__})"
            if not data:
                return "control connection closed"

    def end(self, reason: str) -> None:
        """Make :meth:`hold` return ``reason`` (the server is stopping)."""
        if not self._ended.done():
            self._ended.set_result(reason)

    def close(self, reason: str) -> None:
        """End the association: its sockets closed, its flows closed with ``reason``."""
        if self.closed:
            return
        self.closed = True
        for t in [*self._waiting, *(t for _, t in self._names.values())]:
            t.cancel()
        for s in (self.relay, *self.upstream.values()):
            try:
                self._loop.remove_reader(s.fileno())
            except (ValueError, OSError):
                pass
            s.close()
        n = self.dropped
        why = reason + (f"; {n} datagram{'s' * (n != 1)} dropped" if n else "")
        for key in list(self.destinations):
            self.forget(key, why)

    def forget(self, key: tuple[str, int], reason: str) -> None:
        """Forget one destination (evicted, idle in the flow table's sweep, or the end): its
        flow closes; what it sends from now on is dropped."""
        flow = self.destinations.pop(key, None)
        if flow is not None:
            self.table.close(flow, reason)

    # -------------------------------------------------------------- client -> destination
    def _drop(self, reason: str, source, size: int) -> None:
        self.dropped += 1
        if self.dropped <= MAX_DROP_EVENTS:
            self.table.events.emit("proxy.socks5.udp.dropped", self.peer, relay=fmt(self.bound),
                                   source=fmt(source), size=size, reason=reason)

    def _on_client(self) -> None:
        for _ in range(64):
            try:
                data, source = self.relay.recvfrom(MAX_DATAGRAM)
            except OSError:       # nothing more to read (BlockingIOError is one), or the socket failed
                return
            source = (normal_address(source[0]), source[1])
            if source[0] != self.client_ip:
                self._drop(f"not the association's client ({self.client_ip})", source, len(data))
                continue
            if self.client_port and source[1] != self.client_port:
                self._drop(f"source port {source[1]} is not the association's client port {self.client_port}",
                           source, len(data))
                continue
            try:
                dg = parse_udp(data)
            except UdpHeaderError as e:
                self._drop(f"header: {e.reason}", source, len(data))
                continue
            self.client_port = source[1]
            if dg.atyp == sa.ATYP_DOMAIN:
                self._send_named(dg, source)
            else:
                self._send(normal_address(dg.host), dg.port, dg.data, source)

    def _send_named(self, dg: UdpDatagram, source) -> None:
        """A datagram to a name: sent once the server has resolved it (socks5h)."""
        if len(self._waiting) >= MAX_WAITING:
            self._drop(f"resolving: {MAX_WAITING} datagrams wait for names already", source, len(dg.data))
            return
        task = self._loop.create_task(self._after_lookup(dg, source))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _after_lookup(self, dg: UdpDatagram, source) -> None:
        try:
            address = await asyncio.shield(self._lookup(dg.host))
        except PermissionError:
            return self._drop(f"not allowed: {dg.host} resolves to a loopback, multicast or link-local address",
                              source, len(dg.data))
        except (OSError, asyncio.TimeoutError):
            return self._drop(f"resolving: {dg.host} does not resolve", source, len(dg.data))
        if not self.closed:
            self._send(address, dg.port, dg.data, source, checked=True)

    def _lookup(self, name: str) -> asyncio.Task:
        now = self._loop.time()
        hit = self._names.get(name)
        if hit is not None and hit[0] > now:
            self._names.move_to_end(name)
            return hit[1]
        task = self._loop.create_task(self._resolve(name))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())   # read: no "never retrieved"
        self._names[name] = (now + NAME_TTL, task)
        self._names.move_to_end(name)
        while len(self._names) > MAX_NAMES:
            self._names.popitem(last=False)
        return task

    async def _resolve(self, name: str) -> str:
        """The first address ``name`` resolves to that the server has a route to (a name that
        resolves IPv6 first, on a server without IPv6 routes, takes its IPv4 address, as
        CONNECT would by trying them in turn); every one must be allowed, as for CONNECT."""
        infos = await asyncio.wait_for(self._loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM),
                                       self.resolve_timeout)
        addrs = [normal_address(i[4][0]) for i in infos]
        if not addrs:
            raise socket.gaierror(f"{name} has no address")
        if not all(sa.allowed_destination(a) for a in addrs):
            raise PermissionError(name)
        return next((a for a in addrs if routable(a)), addrs[0])

    def _send(self, address: str, port: int, data: bytes, source, checked: bool = False) -> None:
        if not checked and not sa.allowed_destination(address):
            return self._drop(f"not allowed: {address} is a loopback, multicast or link-local address",
                              source, len(data))
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        key = (address, port)
        try:
            sock = self._upstream(family)
            flow = self.destinations.get(key) or self._new_destination(sock, key)
            sock.sendto(data, key)
        except (BlockingIOError, InterruptedError):
            return self._drop("send: the server's socket buffer is full", source, len(data))
        except OSError as e:
            return self._drop(f"send: {address}:{port}: {e.strerror or e}", source, len(data))
        self.destinations.move_to_end(key)
        self.table.touch(flow, up=len(data))
        self.last = self._loop.time()

    def _upstream(self, family: int) -> socket.socket:
        sock = self.upstream.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
                sock.setblocking(False)
                self._loop.add_reader(sock.fileno(), self._on_reply, sock)
            except OSError:
                sock.close()
                raise
            self.upstream[family] = sock
        return sock

    def _new_destination(self, sock: socket.socket, key: tuple[str, int]) -> Flow:
        """A flow for a destination not seen yet; the server's end is the source address the
        routing table picks for it, with the family's socket's port (all of an association's
        destinations see the same port)."""
        probe = socket.socket(sock.family, socket.SOCK_DGRAM)
        try:
            probe.connect(key)              # a UDP connect sends nothing: it only picks the route
            own = probe.getsockname()[0]
        finally:
            probe.close()
        while len(self.destinations) >= MAX_DESTINATIONS:
            old = next(iter(self.destinations))
            self.forget(old, f"forgotten: {MAX_DESTINATIONS} newer destinations in the association")
        flow = self.table.new("socks5-udp", (self.client_ip, self.client_port), key, self.peer)
        flow.abort = lambda reason, key=key: self.forget(key, reason)
        self.destinations[key] = flow
        self.table.opened(flow, (own, sock.getsockname()[1]), state="active")
        return flow

    # -------------------------------------------------------------- destination -> client
    def _on_reply(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except OSError:       # nothing more to read (BlockingIOError is one), or the socket failed
                return
            key = (normal_address(source[0]), source[1])
            flow = self.destinations.get(key)
            if flow is None:
                self._drop("reply from an address the client has not sent to", key, len(data))
                continue
            try:
                self.relay.sendto(build_udp(key[0], key[1], data), (self.client_ip, self.client_port))
            except OSError as e:
                self._drop(f"to the client: {e.strerror or e}", key, len(data))
                continue
            self.table.touch(flow, down=len(data))
            self.last = self._loop.time()

