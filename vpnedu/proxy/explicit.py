"""The explicit proxies on the server's tunnel addresses: what ``vpnedu server`` starts
(SOCKS5, :mod:`.socks5`, port 1080; HTTP, :mod:`.http_connect`, port 3128).

Unlike the transparent proxy, these are services a client's program names on purpose
(``curl --socks5-hostname 10.0.0.1:1080``).  They listen on the tunnel's own addresses
(10.0.0.1 and the tunnel's IPv6 address), never on a wildcard: a packet to the server's
public address on port 1080 finds no socket, and the kernel answers it with a RST.  And
each connection's source must be inside some peer's AllowedIPs, else it is closed at once
with a ``proxy.refused`` event (cryptokey routing already ties a tunnel source address to
the peer whose key sent it, so the source *is* the authentication of the peer).

The flows go into the same :class:`~.flows.FlowTable` as the transparent proxy's when the
server forwards in ``proxy`` mode, or a table of their own in ``nat`` mode; either way they
show in ``vpnedu status --flows`` and as ``proxy.flow.opened``/``closed`` events whose
``proto`` is ``socks5``, ``http-connect`` (a CONNECT tunnel) or ``http`` (a forwarded request).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from ..errors import VpneduError
from ..events import EventBus
from ..flows import FlowRow
from .flows import DEFAULT_IDLE, FlowTable, sweep_idle
from .http_connect import HttpProxy
from .socks5 import Socks5Server


def bind_listener(address: str, port: int, key: str) -> socket.socket:
    """A listening TCP socket on exactly ``address``:``port``.  ``IP_FREEBIND`` lets it bind an
    IPv6 tunnel address still in duplicate address detection.  A port in use is a one-line
    error naming the config ``key`` to change."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, 15, 1)   # IP_FREEBIND (15): also covers IPv6 sockets
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, port))
        s.listen(1024)
        s.setblocking(False)
    except OSError as e:
        s.close()
        where = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
        raise VpneduError(f"cannot listen on {where} for the {key} service: {e.strerror}",
                          f"choose another port with '{key} = PORT' (or '{key} = off') in the server's [Interface]")
    return s


class ExplicitProxies:
    """The SOCKS5 and HTTP proxy services of one server (a port of 0: that one is off)."""

    def __init__(self, events: EventBus, addresses: list[str], *, peer_of: Callable[[str], str | None],
                 socks_port: int = 1080, http_port: int = 0, users: dict[bytes, bytes] | None = None,
                 table: FlowTable | None = None, idle: dict[str, float] | None = None):
        self.table = table if table is not None else FlowTable(events)
        self.own_table = table is None
        #: Idle timeouts for a table of our own (the transparent proxy sweeps the one it shares).
        self.idle = idle
        self._sweeper: asyncio.Task | None = None
        self.addresses, self.peer_of, self.users = addresses, peer_of, users or {}
        self.socks_port, self.http_port = socks_port, http_port
        self.services: list = []

    def bind(self) -> list[str]:
        """Open the listeners (before the event loop runs); returns what was opened, as text."""
        opened: list[str] = []
        done: list[socket.socket] = []
        try:
            for cls, port, key, name in ((Socks5Server, self.socks_port, "SocksPort", "SOCKS5"),
                                         (HttpProxy, self.http_port, "HTTPProxyPort", "HTTP proxy")):
                if not port:
                    continue
                socks = []
                for a in self.addresses:
                    socks.append(bind_listener(a, port, key))
                    done.append(socks[-1])
                    opened.append(f"{name} on {a}:{port}" if ":" not in a else f"{name} on [{a}]:{port}")
                self.services.append(cls(self.table, socks, peer_of=self.peer_of, users=self.users))
        except VpneduError:
            for s in done:
                s.close()
            self.services = []
            raise
        return opened

    def close_sockets(self) -> None:
        for svc in self.services:
            for s in svc.socks:
                if s.fileno() >= 0:
                    s.close()

    async def start(self) -> None:
        for svc in self.services:
            await svc.start()
        if self.own_table and self.services:
            self._sweeper = asyncio.ensure_future(sweep_idle(self.table, self.idle or DEFAULT_IDLE))

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for svc in self.services:
            await svc.close()

    def sessions(self) -> dict[str, int]:
        """Per service (``socks5``, ``http``), the connections it is serving right now."""
        return {svc.proto: svc.sessions for svc in self.services}

    def flows(self) -> list[FlowRow]:
        """The explicit proxies' rows (only when they keep a table of their own)."""
        return self.table.snapshot() if self.own_table else []


def start_for(server, peer_of: Callable[[str], str | None]) -> ExplicitProxies | None:
    """Bind the explicit proxies of a :class:`~vpnedu.node.server.Server` (called from its
    set-up, after the tunnel's addresses are on the device): on each tunnel address, sharing the
    transparent proxy's flow table when there is one.  ``SocksPort = off``: nothing (None)."""
    from ..config import DEFAULT_HTTP_PROXY_PORT, DEFAULT_SOCKS_PORT
    itf = server.cfg.interface
    port = DEFAULT_SOCKS_PORT if itf.socks_port is None else itf.socks_port
    http = DEFAULT_HTTP_PROXY_PORT if itf.http_proxy_port is None else itf.http_proxy_port
    if not port and not http:
        return None
    addresses = [str(a.ip) for a in itf.addresses]
    users = {n.encode(): p.encode() for n, p in itf.proxy_users}
    explicit = ExplicitProxies(server.events, addresses, peer_of=peer_of, socks_port=port,
                               http_port=http, users=users, idle=server.proxy_idle,
                               table=server.proxy.table if server.proxy is not None else None)
    for line in explicit.bind():
        server.log(f"listening: {line}" + (" (username/password required)" if users else " (no login)"))
    return explicit
