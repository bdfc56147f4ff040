"""The VPN client: one peer (the server), and the routes that send traffic to it.

After its TUN device is up the client changes the host's routing so that the kernel hands it
the traffic that should go through the tunnel, for IPv4 and IPv6 alike:

* **full tunnel** (the server's ``AllowedIPs`` hold ``0.0.0.0/0`` and/or ``::/0``): policy
  routing, as wg-quick(8) does for a /0 (see :mod:`vpnedu.net.routes`): the tunnel's UDP
  sockets get a firewall mark (``FwMark``, else 51820), a table of the tunnel's own (the same
  number) gets ``default dev vpnedu0``, and two rules per family --
  ``not fwmark 51820 table 51820`` and ``table main suppress_prefixlength 0`` -- send every
  packet but the tunnel's own datagrams there.  The main table is not touched: its default
  route is simply ignored while the rules are there, and in force again when they go.
* **split tunnel**: each other prefix of ``AllowedIPs`` as a plain route on the TUN device in
  the main table (``via 10.0.0.1`` for IPv4), except those inside the client's own tunnel
  subnets (the address on the device brings that route with it).

wg-quick's ``Table`` setting chooses between these and two more (wg-quick(8), "Table"):

* ``Table = auto`` (the default) or ``main``: as above;
* ``Table = off``: no routes and no rules at all -- the tunnel is up, and what goes into it is
  the administrator's business (policy routing, a routing daemon);
* ``Table = 1234``: every ``AllowedIPs`` prefix of both families as it is (``0.0.0.0/0`` too)
  into table 1234, no rules; an ``ip rule`` of the administrator's sends traffic to that table
  (with ``FwMark``, ``ip rule not fwmark 0x1234 table 1234`` keeps the tunnel's own packets
  out of it).

Every route and rule goes through the journal and is undone on exit, on SIGTERM, and after a
crash by the next start or ``vpnedu cleanup``.  Then the client starts the handshake and waits
for it; if no response comes within the handshake timeout, it says what to check and
restores the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os

from .. import uapi
from ..errors import ConfigError, VpneduError
from ..net import killswitch, resolver, routes, sysctl
from . import wgquick
from .base import Node


class Client(Node):
    role = "client"
    kill_switch: killswitch.Guard | None = None     # KillSwitch / BlockIPv6's table, once set up

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
        #: A full tunnel's table and fwmark (the same number), and the rules added for it.
        self.policy_table: int | None = None
        self.rules_added: list[routes.Rule] = []
        #: Every route added, with the table it went into (None: main), for the report.
        self.added: list[tuple[routes.Route, int | None]] = []

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
        plan = self.plan_routes(routes.route_to)
        if not os.path.exists("/proc/sys/net/ipv6"):
            v6 = [dst for dst, _, _ in plan if ":" in dst]
            if v6:
                self.log(f"note: this host has no IPv6: AllowedIPs {', '.join(v6)} get no route")
            plan = [step for step in plan if ":" not in step[0]]
        full = [] if table else [dst for dst, _, _ in plan if ipaddress.ip_network(dst).prefixlen == 0]
        self.routes_before = self._tables(table)
        if full:
            mark = self.policy_table = itf.fwmark or routes.free_table()
            if not itf.fwmark:          # wg-quick: 'wg set wg0 fwmark 51820'
                for s in self.sockets.values():
                    wgquick.set_fwmark(s, mark)
                itf.fwmark = mark
            if any(":" not in dst for dst in full):
                # Reverse-path filtering (rp_filter) of the tunnel's incoming datagrams must see
                # the same routing the marked outgoing ones do (wg-quick sets it too).
                if sysctl.set_value(self.journal, "net.ipv4.conf.all.src_valid_mark", "1") != "1":
                    self.changes.append("enabled net.ipv4.conf.all.src_valid_mark (rp_filter honours the fwmark)")
        # Before any route changes and the first handshake: no leak while they are made (vpnedu.net.killswitch).
        guard = self.kill_switch = killswitch.setup(self.journal, self.ifname, itf, self.server.allowed_ips,
                                                    self.server.endpoint, log=self.log)
        if guard:
            self.changes.append(guard.describe())
            self.log(self.changes[-1])
            self.events.emit("killswitch.added", None, table=f"inet {guard.table}", reason=guard.reason,
                             families=", ".join(guard.status()["families"]), ruleset=guard.ruleset())
        for dst, gateway, dev in plan:
            if dst in full:
                route = routes.add(self.journal, dst, None, dev, table=self.policy_table)
                self.added.append((route, self.policy_table))
                for rule in routes.full_tunnel_rules(ipaddress.ip_network(dst).version, self.policy_table):
                    self.rules_added.append(routes.add_rule(self.journal, rule))
            else:
                self.added.append((routes.add(self.journal, dst, gateway, dev, table=table), table))
        self.routes_after = self._tables(table)
        self.report_route_change()
        if itf.dns:     # DNS = : the tunnel's name servers for as long as it is up (vpnedu.net.resolver)
            self.changes.append(resolver.install(self.journal, self.ifname, itf.dns, log=self.log,
                                                 allowed_ips=self.server.allowed_ips))
            self.log(self.changes[-1])

    # ------------------------------------------------------------------ wg set on a running client
    def uapi_rebind(self, port: int | None, fwmark: int | None) -> None:
        self.refuse_mark_change(fwmark)
        super().uapi_rebind(port, fwmark)

    def refuse_mark_change(self, fwmark: int | None) -> None:
        """``wg set IFNAME fwmark N`` on a full tunnel: refused (EINVAL), nothing changed.

        A full tunnel sends everything to its own table *except* packets carrying its fwmark
        (``ip rule not fwmark 0xca6c table 51820``), and the kill switch lets out only that mark
        besides the tunnel device.  Another mark on the sockets would route the tunnel's own
        datagrams into the tunnel -- a loop, and the tunnel dead.  (wg-quick has the same rules
        and the same trap; it does not warn.)  The mark is chosen at start: ``FwMark =``."""
        if fwmark is None or self.policy_table is None or fwmark == self.policy_table:
            return
        raise uapi.UapiError(uapi.EINVAL, f"fwmark {fwmark:#x} refused: this client's full tunnel routes "
                                          f"by fwmark {self.policy_table:#x} (ip rule not fwmark "
                                          f"{self.policy_table:#x} table {self.policy_table}); another mark "
                                          f"would send the tunnel's own datagrams into the tunnel. Set FwMark "
                                          f"in the config and restart the client instead")

    @staticmethod
    def _tables(table: int | None) -> list[routes.Route]:
        return routes.table(4, table or routes.MAIN_TABLE) + routes.table(6, table or routes.MAIN_TABLE)

    def plan_routes(self, route_to) -> list[tuple[str, str | None, str]]:
        """What goes into the tunnel, as ``(destination, gateway, device)``, without touching the host.

        Each ``AllowedIPs`` prefix of either family, in their order: a ``/0`` (``0.0.0.0/0``,
        ``::/0``) means a full tunnel for its family, which :meth:`setup_role` installs with
        policy routing (a table of its own and two rules, see the module docstring); any other
        prefix is a plain route on the device (``via`` the server's tunnel address for IPv4),
        except those inside the client's own tunnel subnets.  ``Table = off``: nothing;
        ``Table = 1234``: every prefix as it is, into that table.

        ``route_to(address)`` says how the host reaches an address now (``ip route get``); the
        real client passes :func:`vpnedu.net.routes.route_to`, the simulation its own table's.
        A full tunnel asks it for the server's endpoint, to refuse stale routes that would send
        the tunnel's own packets into the tunnel.
        """
        gw = self.gateway()
        allowed = list(self.server.allowed_ips)
        own = [a.network for a in self.cfg.interface.addresses]
        table = getattr(self.cfg.interface, "table", None)
        if table == "off":
            return []
        if table and table.isdigit():
            # wg-quick's numbered table: each prefix as it is, on the device, into that table.
            return [(str(n), None, self.ifname) for n in allowed]
        if any(n.prefixlen == 0 for n in allowed):
            via = route_to(self.server.endpoint[0])
            if via.dev == self.ifname:
                raise VpneduError("the server's endpoint is routed into the tunnel itself",
                                  "remove stale vpnedu routes with 'vpnedu cleanup'")
        plan: list[tuple[str, str | None, str]] = []
        for net in allowed:
            if net.prefixlen == 0:
                plan.append((str(net), None, self.ifname))
            elif not any(o.version == net.version and net.subnet_of(o) for o in own):
                plan.append((str(net), gw if net.version == 4 else None, self.ifname))
        return plan

    def report_route_change(self) -> None:
        """Log the routes and rules added, and the main (or numbered) table's difference."""
        table = getattr(self.cfg.interface, "table", None)
        if table == "off":
            self.changes.append("no routes added (Table = off: what goes into the tunnel is up to you)")
            self.log("routing table: unchanged (Table = off)")
            return
        where = f" to table {table}" if table and table.isdigit() else ""
        lines = [self._describe(r, t) for r, t in self.added] + [str(r) for r in self.rules_added]
        self.changes.append(f"routes added{where}: " + "; ".join(lines))
        if self.policy_table is not None:
            self.changes.append(f"full tunnel by policy routing: fwmark {self.policy_table:#x} on the tunnel's "
                                f"sockets, table {self.policy_table} for everything else")
        self.log(f"routing change{f' (table {table})' if where else ''}:")
        for line in lines:
            self.log(f"  + {line}")
        for r, t in self.added:
            self.events.emit("route.added", None, route=self._describe(r, t))
        for r in self.rules_added:
            self.events.emit("route.added", None, route=str(r))

    def _describe(self, route: routes.Route, table: int | None) -> str:
        net = ipaddress.ip_network(route.dst)
        dst = "default" if net.prefixlen == 0 else str(net)
        text = str(routes.Route(dst, route.gateway, route.dev))
        return f"{'-6 ' if net.version == 6 else ''}{text}" + (f" table {table}" if table else "")

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
        st["routes_added"] = [self._describe(r, t) for r, t in self.added]
        st["rules"] = [str(r) for r in self.rules_added]
        st["policy_table"] = self.policy_table
        st["kill_switch"] = self.kill_switch.status() if self.kill_switch else None
        return st
