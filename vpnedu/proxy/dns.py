"""The server's DNS forwarder: port 53 on the tunnel's own addresses, for the tunnel's peers.

A client file with ``DNS = 10.0.0.1`` (``vpnedu server add-client`` writes it) sends the client's
lookups through the tunnel to the server, which asks *its own* resolvers -- the ``nameserver``
lines of its ``/etc/resolv.conf``, read at start -- and hands the answer back.  The network the
client sits on sees neither the names nor the answers.

A forwarder relays bytes: it needs only the 12-byte header (RFC 1035 §4.1.1), never the rest.

* The **query id** is the client's: the query goes upstream unchanged, and an upstream reply is
  taken only if its id is the query's (a stray or forged datagram is ignored).
* **Truncation**: a UDP reply with TC set goes to the client as it is, so the client retries over
  TCP (RFC 1035 §4.2.1, RFC 7766 §5); a query that came over **TCP** goes upstream over TCP,
  each message with its 2-byte length prefix (RFC 1035 §4.2.2).  A TCP connection may carry
  several queries, answered in order.
* Each upstream has a timeout; when every one fails the client gets **SERVFAIL** (rcode 2) for
  its query id and question, not silence.
* **Who may ask**: only an address inside some peer's AllowedIPs; anyone else gets nothing (an
  event ``proxy.dns.dropped`` says why).  The sockets are bound to the tunnel addresses only, so
  the server's public interface never answers.  Short messages (under 12 bytes), messages over
  :data:`MAX_QUERY` and messages that are responses, not queries (QR set), are dropped the same way.

Each query is a flow of the proxy's flow table (``proto`` "dns": client, the server's end
towards the resolver, the resolver), with ``proxy.flow.opened`` / ``proxy.flow.closed`` events.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path
from typing import Callable

from ..errors import VpneduError
from .flows import FlowTable

PORT = 53
HEADER = 12
#: The largest query accepted: one question (a name is at most 255 bytes) and an EDNS OPT record
#: fit many times over; anything larger is not a query a stub resolver sends.
MAX_QUERY = 4096
#: A reply over UDP may be as large as a datagram; over TCP as large as the length prefix allows.
MAX_REPLY = 65535
#: Seconds to wait for one upstream before trying the next.
UPSTREAM_TIMEOUT = 3.0
#: A client's TCP connection that sends no complete query for this long is closed (RFC 7766 §6.2.3).
TCP_IDLE = 10.0
#: At most this many queries in flight at once (a client cannot make the server open unbounded sockets).
MAX_PENDING = 1024
SERVFAIL = 2


# ---------------------------------------------------------------------------- the pure part
def check_query(data: bytes) -> str | None:
    """Why ``data`` is not a query to forward (None: forward it)."""
    if len(data) < HEADER:
        return f"too short ({len(data)} bytes, a DNS header is {HEADER})"
    if len(data) > MAX_QUERY:
        return f"too long ({len(data)} bytes, at most {MAX_QUERY})"
    if data[2] & 0x80:
        return "a response, not a query (QR set)"
    return None


def query_id(data: bytes) -> int:
    return struct.unpack_from("!H", data)[0]


def truncated(data: bytes) -> bool:
    """The TC bit of a message (RFC 1035 §4.1.1: the answer did not fit the datagram)."""
    return len(data) >= HEADER and bool(data[2] & 0x02)


def rcode(data: bytes) -> int:
    return data[3] & 0x0F


def _question_end(data: bytes) -> int | None:
    """The offset after the first question, or None if it does not parse (labels, then type and class)."""
    i = HEADER
    while i < len(data):
        n = data[i]
        if n == 0:
            return i + 5 if i + 5 <= len(data) else None
        if n & 0xC0:              # a compression pointer ends the name (RFC 1035 §4.1.4)
            return i + 6 if i + 6 <= len(data) else None
        i += 1 + n
    return None


def servfail(query: bytes) -> bytes:
    """SERVFAIL for ``query``: its id, opcode and RD, QR and RA set, rcode 2, and its question when
    it has exactly one that parses (else no question: the header alone is still a valid answer)."""
    qid, flags, qdcount = struct.unpack_from("!HHH", query)
    flags = 0x8000 | (flags & 0x7800) | (flags & 0x0100) | 0x0080 | SERVFAIL
    end = _question_end(query) if qdcount == 1 else None
    question = query[HEADER:end] if end else b""
    return struct.pack("!HHHHHH", qid, flags, 1 if question else 0, 0, 0, 0) + question


def frame(message: bytes) -> bytes:
    """A message as TCP carries it: a 2-byte big-endian length, then the message (RFC 1035 §4.2.2)."""
    if len(message) > 0xFFFF:
        raise ValueError(f"a DNS message over TCP is at most 65535 bytes, not {len(message)}")
    return struct.pack("!H", len(message)) + message


def unframe(buffer: bytes) -> tuple[bytes | None, bytes]:
    """The first complete message in ``buffer`` and what follows it, or (None, buffer)."""
    if len(buffer) < 2:
        return None, buffer
    n = struct.unpack_from("!H", buffer)[0]
    if len(buffer) < 2 + n:
        return None, buffer
    return buffer[2:2 + n], buffer[2 + n:]


def upstreams(resolv_conf: str | Path = "/etc/resolv.conf", skip=()) -> list[str]:
    """The ``nameserver`` addresses of ``resolv_conf`` (resolv.conf(5)), without those in ``skip``
    (the tunnel's own addresses: a forwarder must not ask itself).  No file or no line: the name
    server on the local machine, 127.0.0.1, as the C library does."""
    skip = {ipaddress.ip_address(s) for s in skip}
    try:
        lines = Path(resolv_conf).read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    out, seen = [], False
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            seen = True
            try:
                a = ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue
            if a not in skip and str(a) not in out:
                out.append(str(a))
    return out if (out or seen) else ["127.0.0.1"]


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


# ---------------------------------------------------------------------------- the forwarder
class DnsForwarder:
    """UDP and TCP on port 53 of each tunnel address, inside the server's event loop."""

    def __init__(self, table: FlowTable, *, addresses: list[str], servers: list[str],
                 allowed: Callable[[str], str | None | bool], port: int = PORT,
                 timeout: float = UPSTREAM_TIMEOUT):
        self.table = table
        self.events = table.events
        self.addresses = list(addresses)
        self.servers = list(servers)
        #: ``allowed(address)``: the peer's label if the address is inside a peer's AllowedIPs, else None.
        self.allowed = allowed
        self.port = port
        self.timeout = timeout
        self.udp: list[socket.socket] = []
        self.tcp: list[socket.socket] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters = {"queries": 0, "answered": 0, "servfail": 0, "dropped": 0}

    def bind(self) -> None:
        """Open the sockets (before the event loop runs): a port taken is one line naming the key."""
        try:
            for a in self.addresses:
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(_family(a), kind)
                    (self.udp if kind == socket.SOCK_DGRAM else self.tcp).append(s)
                    # The tunnel address may still be tentative (IPv6 duplicate address detection).
                    s.setsockopt(socket.IPPROTO_IP, 15, 1)          # IP_FREEBIND (also for IPv6 sockets)
                    if kind == socket.SOCK_STREAM:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if ":" in a:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setblocking(False)
                    try:
                        s.bind((a, self.port))
                    except OSError as e:
                        proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                        where = f"[{a}]:{self.port}" if ":" in a else f"{a}:{self.port}"
                        raise VpneduError(
                            f"the DNS forwarder cannot listen on {proto} {where}: {e.strerror} (another DNS "
                            "server, e.g. dnsmasq or a resolver bound to every address, has the port?)",
                            "stop that server, or set 'DNSForwarder = false' in the server config's "
                            "[Interface]") from None
                    if kind == socket.SOCK_STREAM:
                        s.listen(128)
        except BaseException:
            self.close_sockets()
            raise

    def sockets(self) -> list[socket.socket]:
        return [*self.udp, *self.tcp]

    def close_sockets(self) -> None:
        for s in self.sockets():
            if s.fileno() >= 0:
                s.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for s in self.udp:
            self._loop.add_reader(s.fileno(), self._on_udp, s)
        for s in self.tcp:
            self._servers.append(await asyncio.start_server(self._on_tcp, sock=s))
        self.events.emit("proxy.dns.listening", None, addresses=", ".join(self.addresses), port=self.port,
                         upstreams=", ".join(self.servers))

    async def close(self) -> None:
        for s in self.udp:
            if self._loop is not None and s.fileno() >= 0:
                self._loop.remove_reader(s.fileno())
        for srv in self._servers:
            srv.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.close_sockets()

    def status(self) -> dict:
        return {"addresses": self.addresses, "port": self.port, "upstreams": self.servers, **self.counters}

    # ------------------------------------------------------------------ who, and what
    def _admit(self, client: tuple[str, int], data: bytes, proto: str) -> tuple[bool, str | None]:
        peer = self.allowed(client[0])
        why = None if peer else "source outside every peer's AllowedIPs"
        why = why or check_query(data)
        if why is not None:
            self.counters["dropped"] += 1
            self.events.emit("proxy.dns.dropped", peer or None, client=_fmt(client), transport=proto,
                             size=len(data), reason=why)
            return False, None
        return True, peer if isinstance(peer, str) else None

    def _spawn(self, coro) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ UDP
    def _on_udp(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, client = sock.recvfrom(MAX_REPLY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            client = client[:2]       # an IPv6 address comes with flow info and scope id
            ok, peer = self._admit(client, data, "udp")
            if not ok:
                continue
            if len(self._tasks) >= MAX_PENDING:
                self.counters["dropped"] += 1
                self.events.emit("proxy.dns.dropped", peer, client=_fmt(client), transport="udp",
                                 size=len(data), reason=f"{MAX_PENDING} queries in flight already")
                continue
            self._spawn(self._udp_query(sock, client, data, peer))

    async def _udp_query(self, sock: socket.socket, client, data: bytes, peer: str | None) -> None:
        reply = await self._forward(client, data, peer, tcp=False)
        try:
            sock.sendto(reply, client)
        except OSError:
            pass

    async def _ask_udp(self, server: str, data: bytes, flow) -> bytes:
        loop = asyncio.get_running_loop()
        s = socket.socket(_family(server), socket.SOCK_DGRAM)
        try:
            s.setblocking(False)
            s.connect((server, PORT))
            flow.proxy = s.getsockname()[:2]
            s.send(data)
            want = query_id(data)
            while True:
                reply = await loop.sock_recv(s, MAX_REPLY)
                if len(reply) >= HEADER and query_id(reply) == want and reply[2] & 0x80:
                    return reply      # TC set or not: passed on as it is
        finally:
            s.close()

    # ------------------------------------------------------------------ TCP
    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[:2]
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if not self.allowed(client[0]):
                self._admit(client, b"", "tcp")     # the event, and nothing else
                return
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                    n = struct.unpack("!H", head)[0]
                    if n > MAX_QUERY or n < HEADER:
                        self._admit(client, b"\0" * n, "tcp")    # too long / short: drop, close
                        return
                    data = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    return
                ok, peer = self._admit(client, data, "tcp")
                if not ok:
                    return
                reply = await self._forward(client, data, peer, tcp=True)
                writer.write(frame(reply))
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _ask_tcp(self, server: str, data: bytes, flow) -> bytes:
        reader, writer = await asyncio.open_connection(server, PORT)
        try:
            flow.proxy = writer.get_extra_info("sockname")[:2]
            writer.write(frame(data))
            await writer.drain()
            want = query_id(data)
            while True:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = await reader.readexactly(n)
                if len(reply) >= HEADER and query_id(reply) == want:
                    return reply
        finally:
            writer.close()

    # ------------------------------------------------------------------ both
    async def _forward(self, client, data: bytes, peer: str | None, *, tcp: bool) -> bytes:
        """Ask each upstream in turn (over the client's transport); the first reply, else SERVFAIL."""
        self.counters["queries"] += 1
        ask = self._ask_tcp if tcp else self._ask_udp
        for server in self.servers:
            flow = self.table.new("dns", client, (server, PORT), peer)
            self.table.opened(flow, None, state="asking")
            self.table.touch(flow, up=len(data))
            try:
                reply = await asyncio.wait_for(ask(server, data, flow), self.timeout)
            except asyncio.TimeoutError:
                self.table.close(flow, f"no answer in {self.timeout:g} s")
                continue
            except (OSError, asyncio.IncompleteReadError) as e:
                self.table.close(flow, f"upstream error: {getattr(e, 'strerror', None) or type(e).__name__}")
                continue
            self.table.touch(flow, down=len(reply))
            self.counters["answered"] += 1
            self.table.close(flow, "answered" + (" (truncated: TC set)" if truncated(reply) else "")
                             + (f" rcode {rcode(reply)}" if rcode(reply) else ""))
            return reply
        self.counters["servfail"] += 1
        self.events.emit("proxy.dns.servfail", peer, client=_fmt(client), upstreams=", ".join(self.servers),
                         transport="tcp" if tcp else "udp")
        return servfail(data)


def _fmt(addr) -> str:
    from .flows import fmt
    return fmt(tuple(addr[:2]))
