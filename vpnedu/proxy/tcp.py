"""The TCP relay: the server accepts the client's connection and opens its own.

Connect first, then accept
--------------------------
A transparent proxy has a classic flaw: the kernel completes the client's
three-way handshake *before* the proxy learns whether the destination is
listening, so a closed port looks open to the client, then resets.  vpnedu
avoids it because the server's datapath sees every decrypted packet before the
kernel does.  A client's SYN to the outside is held back (:meth:`TcpRelay.on_syn`)
while the proxy connects to the destination itself:

* the destination accepts  -> the held SYN is written to the TUN device; TPROXY
  delivers it to our listening socket; the kernel completes the handshake; we
  pair the accepted socket with the waiting upstream one and relay;
* the destination refuses  -> we answer the SYN with a RST, exactly what the
  destination did to us: the client's ``connect()`` fails with "connection refused";
* no answer / unreachable  -> an ICMP host-unreachable (ICMPv6 address-unreachable for
  an IPv6 client), so the client fails with "no route to host" instead of hanging.

IPv6 works the same way, with a listener of its own (an ``IPV6_TRANSPARENT`` socket on
``::``): the client's IPv6 SYN is held, the server connects from its own IPv6 address, and
the accepted socket's local address is the original IPv6 destination.

Relaying
--------
Two pumps per flow, one each way: read at most 64 KiB, write, wait until the
other side's buffer has drained (``drain``) -- so a slow reader slows the
sender down instead of growing a buffer (backpressure).  An end-of-file on one
side is passed on as a half-close (``shutdown(SHUT_WR)``), so protocols that
send "request, FIN, then read the answer" work.  A reset on one side is passed
on as a reset on the other, at once: the pump that sees it says which side failed
(a read error is its source's, a write error its destination's), the other pump
is stopped, and the *other* side gets the RST.  A flow idle longer than the idle
timeout is closed.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import Callable

from ..net.tproxy import listener
from ..packet.ip import addresses, build_icmp_unreachable, build_tcp_reset_for
from .flows import Flow, FlowTable

CHUNK = 65536
#: How long a connected upstream socket waits for the client's handshake to reach our listener.
ACCEPT_WAIT = 10.0


@dataclass(eq=False)
class _Pending:
    flow: Flow
    syn: bytes
    task: asyncio.Task | None = None
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    expire: asyncio.TimerHandle | None = None
    relays: set = field(default_factory=set)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close a connection with a RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class TcpRelay:
    def __init__(self, table: FlowTable, *, deliver: Callable[[bytes], None],
                 inject: Callable[[bytes], None], connect_timeout: float = 10.0):
        self.table = table
        #: The transparent listening sockets, by IP version (4, 6).
        self.socks: dict[int, socket.socket] = {}
        self.deliver = deliver      # write a packet into the kernel (the TUN device)
        self.inject = inject        # send a packet to a client through the tunnel
        self.connect_timeout = connect_timeout
        self.pending: dict[tuple, _Pending] = {}
        #: Connections accepted, by (client, port, destination, port): a late SYN of theirs is the kernel's.
        self.accepted: dict[tuple, Flow] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()

    @property
    def sock(self) -> socket.socket | None:
        """The IPv4 listener (the IPv6 one is ``socks[6]``)."""
        return self.socks.get(4)

    def bind(self, version: int = 4, port: int = 0, prefer: int = 0) -> int:
        """Open the transparent listening socket for IP ``version`` (before the event loop runs)
        on ``port`` (0: any), or on ``prefer`` if that is free; returns its port."""
        self.socks[version] = listener(socket.SOCK_STREAM, version, port, prefer)
        return self.socks[version].getsockname()[1]

    async def start(self) -> None:
        for s in self.socks.values():
            srv = await asyncio.start_server(self._accepted, sock=s, backlog=4096, limit=CHUNK)
            self._servers.append(srv)

    async def close(self) -> None:
        for p in list(self.pending.values()):
            self._drop_pending(p, "server stopping")
        for f in [f for f in self.table.flows.values() if f.proto == "tcp"]:
            if f.abort:
                f.abort("server stopping")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for srv in self._servers:
            srv.close()
            await srv.wait_closed()
        if not self._servers:
            for s in self.socks.values():
                s.close()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # ------------------------------------------------------------------ the SYN gate
    def on_syn(self, peer: str | None, packet: bytes, ihl: int) -> bool:
        """A client's SYN to the outside: return True if we hold it back (connecting first).
        ``ihl``: where the TCP header starts (after the IPv4 header, or IPv6's 40 bytes)."""
        sport, dport = struct.unpack_from("!HH", packet, ihl)
        src, dst = addresses(packet)
        key = (src, sport, dst, dport)
        if key in self.accepted:
            return False  # a duplicate or late SYN of a connection we relay: the kernel answers it
        p = self.pending.get(key)
        if p is None:
            flow = self.table.new("tcp", (src, sport), (dst, dport), peer)
            flow.state = "connecting"
            p = _Pending(flow, bytes(packet))
            # The idle sweeper (or the server stopping) drops a flow still being set up properly.
            flow.abort = lambda reason, p=p: self._drop_pending(p, reason)
            self.pending[key] = p
            p.task = self._spawn(self._connect(key, p))
            return True
        if p.upstream is not None:
            return False  # already connected: this is a retransmission the kernel will handle
        p.syn = bytes(packet)  # still connecting: keep the latest SYN to release later
        return True

    async def _connect(self, key: tuple, p: _Pending) -> None:
        dst = p.flow.destination
        try:
            p.upstream = await asyncio.wait_for(asyncio.open_connection(dst[0], dst[1], limit=CHUNK),
                                                self.connect_timeout)
        except ConnectionRefusedError:
            self.inject(build_tcp_reset_for(p.syn))
            self._drop_pending(p, "refused")
            return
        except (asyncio.TimeoutError, OSError) as e:
            self.inject(build_icmp_unreachable(p.syn, dst[0]))
            self._drop_pending(p, "timeout" if isinstance(e, asyncio.TimeoutError) else "unreachable")
            return
        p.flow.state = "syn-released"
        p.flow.proxy = p.upstream[1].get_extra_info("sockname")[:2]
        p.expire = asyncio.get_running_loop().call_later(ACCEPT_WAIT, self._drop_pending, p, "client gone")
        self.deliver(p.syn)

    def _drop_pending(self, p: _Pending, reason: str) -> None:
        key = (*p.flow.client, *p.flow.destination)
        if self.pending.get(key) is p:
            del self.pending[key]
        if p.expire is not None:
            p.expire.cancel()
        if p.task is not None and not p.task.done() and p.task is not asyncio.current_task():
            p.task.cancel()
        if p.upstream is not None:
            p.upstream[1].transport.abort()
        self.table.close(p.flow, reason)

    # ------------------------------------------------------------------ accepted connections
    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[:2]
        dst = writer.get_extra_info("sockname")[:2]   # TPROXY: our local address is the original destination
        task = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        key = (*client, *dst)
        p = self.pending.pop(key, None)
        if p is None or p.upstream is None:
            # The SYN did not pass our gate (e.g. it was queued before the proxy started): connect now.
            if p is not None:
                self._drop_pending(p, "raced")
            flow = self.table.new("tcp", client, dst)
        else:
            p.expire.cancel()
            flow = p.flow
        self.accepted[key] = flow
        try:
            if p is None or p.upstream is None:
                try:
                    up = await asyncio.wait_for(asyncio.open_connection(dst[0], dst[1], limit=CHUNK),
                                                self.connect_timeout)
                except (asyncio.TimeoutError, OSError):
                    _reset(writer)
                    self.table.close(flow, "refused")
                    return
            else:
                up = p.upstream
            self.table.opened(flow, up[1].get_extra_info("sockname")[:2])
            await relay(self.table, flow, reader, writer, *up)
        finally:
            if self.accepted.get(key) is flow:
                del self.accepted[key]


async def relay(table: FlowTable, flow: Flow, c_r, c_w, u_r, u_w) -> None:
    """Relay an accepted client connection (``c_r``/``c_w``) and its upstream one until both ends
    are done, counting bytes in ``flow`` and closing it in ``table`` with the reason.  The
    transparent relay and the explicit proxies (:mod:`.socks5`, :mod:`.http_connect`) share it."""
    up = asyncio.ensure_future(_pump(table, flow, c_r, u_w, up=True))
    down = asyncio.ensure_future(_pump(table, flow, u_r, c_w, up=False))
    why = {"reason": "closed"}

    def abort(reason: str) -> None:
        why["reason"] = reason
        up.cancel()
        down.cancel()
    flow.abort = abort
    failed = None     # "client" or "upstream": the side whose connection was reset
    try:
        waiting = {up, down}
        while waiting and failed is None:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is None and t.result() != "eof":
                    failed = failed or t.result()
        # A reset ends both directions: the other pump may be waiting on a side that stays silent.
        for t in waiting:
            t.cancel()
        if waiting:
            await asyncio.wait(waiting)
    except asyncio.CancelledError:
        up.cancel()
        down.cancel()
        for w in (c_w, u_w):
            w.transport.abort()
        table.close(flow, why["reason"] if why["reason"] != "closed" else "server stopping")
        raise
    finally:
        flow.abort = None
    if failed is not None:
        # One side reset: tell the other side the same way.
        _reset(u_w if failed == "client" else c_w)
        why["reason"] = "reset"
    for w in (c_w, u_w):
        w.close()
    for w in (c_w, u_w):
        try:
            await w.wait_closed()
        except (OSError, asyncio.CancelledError):
            pass
    table.close(flow, why["reason"])

async def _pump(table: FlowTable, flow: Flow, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                up: bool) -> str:
    """Copy one direction until end-of-file; returns "eof", or the side that was reset
    ("client" or "upstream"): an error reading is the source's, writing the destination's."""
    source, destination = ("client", "upstream") if up else ("upstream", "client")
    while True:
        try:
            data = await reader.read(CHUNK)
        except OSError:      # ConnectionResetError and the like
            return source
        if not data:
            break
        try:
            writer.write(data)
            if up:
                table.touch(flow, up=len(data))
            else:
                table.touch(flow, down=len(data))
            await writer.drain()
        except OSError:      # BrokenPipeError, ConnectionResetError ...
            return destination
    flow.state = "half-closed" if flow.state == "established" else flow.state
    try:
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
    except OSError:
        return destination
    return "eof"
