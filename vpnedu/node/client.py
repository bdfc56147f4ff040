"""The VPN client: one peer (the server), and the routes that send traffic to it.

After its TUN device is up the client changes the routing table so that the
kernel hands it the traffic that should go through the tunnel:

* **full tunnel** (the server's ``AllowedIPs`` contain ``0.0.0.0/0``): a host
  route to the server's public address via the original gateway, and
  ``0.0.0.0/1`` + ``128.0.0.0/1`` via the server's tunnel address (10.0.0.1).
  The default gateway is now the server; the old default route stays in the
  table and takes over again when these routes go.
* **split tunnel**: only the prefixes in ``AllowedIPs`` go into the tunnel.

wg-quick's ``Table`` setting chooses between these and two more (wg-quick(8), "Table"):

* ``Table = auto`` (the default) or ``main``: the routes above, in the main table;
* ``Table = off``: no routes at all -- the tunnel is up, and what goes into it is the
  administrator's business (policy routing, a routing daemon);
* ``Table = 1234``: every IPv4 ``AllowedIPs`` prefix as it is (``0.0.0.0/0`` too) into
  table 1234, and nothing into the main table; an ``ip rule`` of the administrator's sends
  traffic to that table (with ``FwMark``, ``ip rule not fwmark 0x1234 table 1234`` keeps the
  tunnel's own packets out of it).

Then it starts the handshake and waits for it; if no response comes within the
handshake timeout, it says what to check and restores the host.
"""

from __future__ import annotations

import asyncio

from ..errors import ConfigError, VpneduError
from ..net import resolver, routes
from .base import Node


class Client(Node):
    role = "client"

    def __init__(self, cfg, *, handshake_timeout: float = 20.0, **kw):
        super().__init__(cfg, **kw)
        if len(cfg.peers) != 1:
            raise ConfigError(f"{cfg.source}: a client config needs exactly one [Peer] (the server), "
                              f"found {len(cfg.peers)}", "keep only the server's [Peer] section")
        self.server = next(iter(self.device.peers.values()))
        if self.server.endpoint is None:
            raise ConfigError(f"{cfg.source}: the server's [Peer] has no Endpoint",
                              "add 'Endpoint = <server address>:51820'")
        self.handshake_timeout = handshake_timeout
        self.routes_before: list[routes.Route] = []
        self.routes_after: list[routes.Route] = []

    def gateway(self) -> str | None:
        """The server's tunnel address: the first host of our tunnel subnet (10.0.0.1)."""
        for a in self.cfg.interface.addresses:
            if a.version == 4 and a.network.prefixlen < 31:
                first = next(a.network.hosts())
                return str(first) if first != a.ip else None
        return None

    def setup_role(self) -> None:
        itf = self.cfg.interface
        table = itf.route_table
        skipped = [str(n) for n in self.server.allowed_ips if n.version == 6
                   and not any(n.subnet_of(a.network) for a in itf.addresses if a.version == 6)]
        if skipped and itf.adds_routes:
            self.log(f"note: AllowedIPs {', '.join(skipped)}: the client routes IPv4 only; these IPv6 prefixes "
                     "are accepted from the server but no route sends traffic to them into the tunnel")
        self.routes_before = routes.table(table=table or routes.MAIN_TABLE)
        for dst, gateway, dev in self.plan_routes(routes.route_to):
            routes.add(self.journal, dst, gateway, dev, table=table)
        self.routes_after = routes.table(table=table or routes.MAIN_TABLE)
        self.report_route_change()
        if itf.dns:     # DNS = : the tunnel's name servers for as long as it is up (vpnedu.net.resolver)
            self.changes.append(resolver.install(self.journal, self.ifname, itf.dns, log=self.log,
                                                 allowed_ips=self.server.allowed_ips))
            self.log(self.changes[-1])

    def plan_routes(self, route_to) -> list[tuple[str, str | None, str]]:
        """The routes to add, as ``(destination, gateway, device)``, without touching the host.

        ``route_to(address)`` says how the host reaches an address now (``ip route get``); the
        real client passes :func:`vpnedu.net.routes.route_to`, the simulation its own table's.
        """
        gw = self.gateway()
        v4 = [n for n in self.server.allowed_ips if n.version == 4]
        own = [a.network for a in self.cfg.interface.addresses]
        plan: list[tuple[str, str | None, str]] = []
        table = getattr(self.cfg.interface, "table", None)
        if table == "off":
            return plan
        if table and table.isdigit():
            # wg-quick's numbered table: each prefix as it is, on the device, into that table.
            return [(str(n), None, self.ifname) for n in v4]
        if any(n.prefixlen == 0 for n in v4):
            via = route_to(self.server.endpoint[0])
            if via.dev == self.ifname:
                raise VpneduError("the server's endpoint is routed into the tunnel itself",
                                  "remove stale vpnedu routes with 'vpnedu cleanup'")
            plan.append((f"{self.server.endpoint[0]}/32", via.gateway, via.dev))
            for half in routes.FULL_TUNNEL_HALVES:
                plan.append((half, gw, self.ifname))
        else:
            for net in v4:
                if not any(net.subnet_of(o) for o in own if o.version == 4):
                    plan.append((str(net), gw, self.ifname))
        return plan

    def report_route_change(self) -> None:
        """Log the difference between :attr:`routes_before` and :attr:`routes_after`."""
        added = [r for r in self.routes_after if r not in self.routes_before]
        removed = [r for r in self.routes_before if r not in self.routes_after]
        table = getattr(self.cfg.interface, "table", None)
        if table == "off":
            self.changes.append("no routes added (Table = off: what goes into the tunnel is up to you)")
            self.log("routing table: unchanged (Table = off)")
            return
        where = f" to table {table}" if table and table.isdigit() else ""
        self.changes.append(f"routes added{where}: " + "; ".join(str(r) for r in added))
        self.log(f"routing table change{f' (table {table})' if where else ''}:")
        for r in removed:
            self.log(f"  - {r}")
        for r in added:
            self.log(f"  + {r}")
            self.events.emit("route.added", None, route=str(r))

    async def after_start(self) -> None:
        """Start the handshake and wait for it."""
        self._send(self.device.initiate(self.server, self.clock()))
        self.schedule_tick()
        waited = 0.0
        while self.server.current is None:
            await asyncio.sleep(0.05)
            waited += 0.05
            if waited >= self.handshake_timeout:
                ep = self.server.endpoint
                self.fail(VpneduError(
                    f"no handshake response from {ep[0]}:{ep[1]} after {self.handshake_timeout:g} s",
                    "check the server's public key, endpoint and firewall (UDP port "
                    f"{ep[1]}), and that both sides use the same CipherSuite"))
                return
        self.log(f"handshake complete with the server {self.server.endpoint[0]}:{self.server.endpoint[1]}")
        if self.server.persistent_keepalive:
            self._send(self.device.keepalive(self.server, self.clock()))

    def status(self) -> dict:
        st = super().status()
        st["routes_before"] = [str(r) for r in self.routes_before]
        st["routes_after"] = [str(r) for r in self.routes_after]
        st["table"] = self.cfg.interface.table or "auto"
        st["dns"] = list(self.cfg.interface.dns)
        return st
