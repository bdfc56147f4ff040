"""The UDP relay: per-flow sockets, replies sent back from the original destination.

UDP has no connections, so the proxy makes its own notion of a flow: the pair
(client address:port, destination address:port).  The first datagram of a flow
reaches the shared TPROXY socket, which learns the original destination from
the ``IP_ORIGDSTADDR`` control message (``IP_RECVORIGDSTADDR``).  The relay
then opens two sockets for the flow:

* **upstream**: an ordinary socket connected to the destination; the
  destination sees the server's own address and an ephemeral port;
* **downstream**: an ``IP_TRANSPARENT`` socket *bound to the destination's
  address and port* and connected to the client.  What it sends leaves with the
  destination as its source, so the client's program accepts the reply (a DNS
  resolver drops answers from the wrong address).  Because it is connected, the
  kernel also delivers the flow's later datagrams from the client to it, not to
  the shared socket.

A flow that carries nothing for the idle timeout is closed with its sockets.

IPv6 is the same with IPv6 sockets: a shared ``IPV6_TRANSPARENT`` socket on ``::`` whose
datagrams carry ``IPV6_ORIGDSTADDR`` (``IPV6_RECVORIGDSTADDR``), an upstream socket that
leaves from the server's own IPv6 address, and a downstream one bound to the original IPv6
destination.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from ..net.tproxy import ORIGDST_SPACE, listener, original_destination, transparent_socket
from .flows import Flow, FlowTable

MAX_DATAGRAM = 65535
#: At most this many flows at once: a client cannot make the server open unbounded sockets.
MAX_FLOWS = 4096


class _UdpFlow:
    def __init__(self, flow: Flow, up: socket.socket, down: socket.socket):
        self.flow, self.up, self.down = flow, up, down


class UdpRelay:
    def __init__(self, table: FlowTable, *, peer_of: Callable[[str], str | None] = lambda a: None):
        self.table = table
        self.peer_of = peer_of
        self.flows: dict[tuple, _UdpFlow] = {}
        #: The shared transparent sockets, by IP version (4, 6).
        self.socks: dict[int, socket.socket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def sock(self) -> socket.socket | None:
        """The IPv4 shared socket (the IPv6 one is ``socks[6]``)."""
        return self.socks.get(4)

    def bind(self, version: int = 4, port: int = 0, prefer: int = 0) -> int:
        """Open the shared transparent socket for IP ``version`` (before the event loop runs) on
        ``port`` (0: any), or on ``prefer`` if that is free; returns its port."""
        self.socks[version] = listener(socket.SOCK_DGRAM, version, port, prefer)
        return self.socks[version].getsockname()[1]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for s in self.socks.values():
            self._loop.add_reader(s.fileno(), self._on_first_datagrams, s)

    async def close(self) -> None:
        for uf in list(self.flows.values()):
            self._close(uf, "server stopping")
        for s in self.socks.values():
            if self._loop is not None:
                self._loop.remove_reader(s.fileno())
            s.close()
        self.socks = {}

    def _on_first_datagrams(self, sock: socket.socket) -> None:
        for _ in range(64):
            try:
                data, anc, _flags, client = sock.recvmsg(MAX_DATAGRAM, ORIGDST_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            dst = original_destination(anc)
            if dst is None:
                continue
            key = (client[0], client[1], *dst)
            uf = self.flows.get(key)
            if uf is None:
                if len(self.flows) >= MAX_FLOWS:
                    continue
                try:
                    uf = self._open(client[:2], dst)
                except OSError:
                    continue
            self._forward_up(uf, data)

    def _open(self, client: tuple[str, int], dst: tuple[str, int]) -> _UdpFlow:
        flow = self.table.new("udp", client, dst, self.peer_of(client[0]))
        up = socket.socket(socket.AF_INET6 if ":" in dst[0] else socket.AF_INET, socket.SOCK_DGRAM)
        down = None
        try:
            up.setblocking(False)
            up.connect(dst)
            down = transparent_socket(socket.SOCK_DGRAM, dst)
            down.connect(client)
        except OSError:
            up.close()
            if down is not None:
                down.close()
            self.table.close(flow, "socket error")
            raise
        uf = _UdpFlow(flow, up, down)
        self.flows[(*client, *dst)] = uf
        self._loop.add_reader(up.fileno(), self._on_reply, uf)
        self._loop.add_reader(down.fileno(), self._on_client, uf)
        flow.abort = lambda reason, uf=uf: self._close(uf, reason)
        self.table.opened(flow, up.getsockname()[:2], state="active")
        return uf

    def _forward_up(self, uf: _UdpFlow, data: bytes) -> None:
        try:
            uf.up.send(data)
        except (BlockingIOError, ConnectionRefusedError):
            return  # ICMP port unreachable from an earlier datagram: UDP just loses it
        except OSError:
            return
        self.table.touch(uf.flow, up=len(data))

    def _on_client(self, uf: _UdpFlow) -> None:
        for _ in range(64):
            try:
                data = uf.down.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._forward_up(uf, data)

    def _on_reply(self, uf: _UdpFlow) -> None:
        for _ in range(64):
            try:
                data = uf.up.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:   # e.g. ECONNREFUSED: the destination port is closed
                return
            try:
                uf.down.send(data)
            except OSError:
                continue
            self.table.touch(uf.flow, down=len(data))

    def _close(self, uf: _UdpFlow, reason: str) -> None:
        key = (*uf.flow.client, *uf.flow.destination)
        if self.flows.pop(key, None) is None:
            return
        for s in (uf.up, uf.down):
            try:
                self._loop.remove_reader(s.fileno())
            except (ValueError, OSError):
                pass
            s.close()
        self.table.close(uf.flow, reason)
