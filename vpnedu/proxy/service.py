"""The listening side the explicit proxies share: SOCKS5 (:mod:`.socks5`) and the HTTP proxy
(:mod:`.http_connect`).

Both accept TCP connections on sockets already bound to the tunnel's addresses, refuse at once
a connection whose source is in no peer's AllowedIPs (cryptokey routing has already tied a
tunnel source address to the key that sent it, so the address *is* the peer's
authentication), keep a task per connection so that stopping the server can cancel them, and
report every refusal as a ``proxy.refused`` event.  What happens on an accepted connection --
the protocol's own negotiation, then the relay -- is each subclass's :meth:`session`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from .flows import FlowTable
from .tcp import CHUNK, relay


class ExplicitService:
    """One explicit proxy service on the tunnel's addresses.

    ``sockets``: listening sockets already bound (:func:`.explicit.bind_listeners`);
    ``peer_of(address)``: the tunnel peer whose AllowedIPs hold ``address``, or ``None``;
    ``users``: username -> password (empty: no authentication)."""

    #: The protocol named in ``proxy.refused`` events.
    proto = ""
    #: The flow-table protocols of this service's flows (aborted when the service closes).
    flow_protos: tuple[str, ...] = ()

    def __init__(self, table: FlowTable, sockets: list[socket.socket], *,
                 peer_of: Callable[[str], str | None], users: dict[bytes, bytes] | None = None,
                 connect_timeout: float = 10.0):
        self.table, self.socks, self.peer_of = table, sockets, peer_of
        self.users = dict(users or {})
        self.connect_timeout = connect_timeout
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()

    @property
    def sessions(self) -> int:
        """Connections being served right now (negotiating or relaying): one task each."""
        return len(self._tasks)

    async def start(self) -> None:
        for s in self.socks:
            self._servers.append(await asyncio.start_server(self._serve, sock=s, limit=CHUNK, backlog=1024))

    async def close(self) -> None:
        for srv in self._servers:
            srv.close()
        for f in [f for f in self.table.flows.values() if f.proto in self.flow_protos]:
            if f.abort:
                f.abort("server stopping")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for srv in self._servers:
            await srv.wait_closed()

    def refuse(self, writer: asyncio.StreamWriter, client, reason: str, answer: bytes = b"") -> None:
        """Close a connection with a ``proxy.refused`` event: after ``answer`` (the protocol's
        error reply) if there is one, else at once (a reset)."""
        self.table.events.emit("proxy.refused", None, proto=self.proto, client=f"{client[0]}:{client[1]}",
                               reason=reason)
        if answer:
            writer.write(answer)
            writer.close()
        else:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        client = writer.get_extra_info("peername")[:2]
        peer = self.peer_of(client[0])
        if peer is None:
            return self.refuse(writer, client, "source outside every peer's AllowedIPs")
        await self.session(reader, writer, client, peer)

    async def relay_after(self, flow, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream,
                          to_client: bytes = b"", to_upstream: bytes = b"") -> None:
        """The destination answered (``upstream``: its reader and writer): send the protocol's
        success answer (``to_client``) and/or what goes ahead to the destination
        (``to_upstream``), then relay both ways until the flow ends.  A client gone by then
        closes the flow ("client gone")."""
        bound = upstream[1].get_extra_info("sockname")[:2]
        try:
            if to_client:
                writer.write(to_client)
            if to_upstream:
                upstream[1].write(to_upstream)
            await writer.drain()
        except OSError:
            upstream[1].transport.abort()
            writer.transport.abort()
            self.table.close(flow, "client gone")
            return
        self.table.opened(flow, bound)
        self.table.touch(flow, up=len(to_upstream))    # the request head went upstream: it counts
        await relay(self.table, flow, reader, writer, *upstream)

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client, peer: str) -> None:
        """One accepted connection from tunnel peer ``peer``: the protocol's part."""
        raise NotImplementedError
