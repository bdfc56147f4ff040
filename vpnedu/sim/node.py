"""The vpnedu server and client daemons, run on simulated hosts.

:class:`SimServer` and :class:`SimClient` *are* :class:`vpnedu.node.server.Server`
and :class:`vpnedu.node.client.Client`: the same config handling, the same
protocol :class:`~vpnedu.protocol.device.Device`, the same
:class:`~vpnedu.datapath.Datapath` (``on_tun_readable``: TUN -> ``Device.send_packets``
-> UDP; ``on_udp_readable``: UDP -> ``Device.receive_batch`` -> TUN), the same route
planner (:meth:`~vpnedu.node.client.Client.plan_routes`) and the same status.  Only the
host they change is different: a :class:`~vpnedu.sim.host.SimHost` with a
:class:`~vpnedu.sim.tun.MemoryTun` and a :class:`~vpnedu.sim.host.SimSocket`
instead of the kernel (so the datapath runs without offloads: ``--datapath simple``), and
the simulation's loop (:meth:`SimNode.pump`) instead of asyncio calling them when packets
wait or a timer is due -- on the clock the simulation gives them (``clock=``), which may
be a :class:`~vpnedu.sim.FakeClock`.
"""

from __future__ import annotations

from typing import Callable

from .. import uapi
from ..datapath import Options
from ..errors import VpneduError
from ..node.client import Client
from ..node.server import Server
from .host import SimHost, SimSocket
from .tun import MemoryTun


class SimNode:
    """What the simulated server and client add to the real ones (mixed in before them)."""

    host: SimHost

    def attach(self, host: SimHost) -> None:
        self.host = host
        self._undo: list[Callable[[], None]] = []

    def check_privileges(self) -> None:
        """Nothing to check: a simulated host needs no root."""

    def open_socket(self) -> SimSocket:
        return SimSocket(self.host, self.cfg.interface.listen_port or 0)

    def setup(self) -> None:
        """The real :meth:`Node.setup`, on the simulated host: UDP socket, TUN device, addresses."""
        self.sock = self.open_socket()
        self.tun = MemoryTun(self.host, self.ifname)
        self.datapath_options = Options.simple()   # an in-memory device offers no offloads
        self.open_datapath()
        for a in self.cfg.interface.addresses:
            self.host.add_address(self.ifname, a)
        addrs = ", ".join(str(a) for a in self.cfg.interface.addresses)
        self.changes.append(f"created TUN device {self.ifname} with {addrs}, MTU {self.device.mtu}")
        self.events.emit("device.up", None, interface=self.ifname, addresses=addrs, mtu=self.device.mtu)
        self.setup_role()

    def teardown(self) -> None:
        """Undo every change, newest first, as the real daemon's journal does."""
        if self.tun is not None and not self.tun.closed:
            self.tun.close()
            self.events.emit("device.down", None, interface=self.ifname)
        while self._undo:
            self._undo.pop()()
        if self.sock is not None:
            self.sock.close()

    def schedule_tick(self) -> None:
        """The simulation's loop asks :meth:`pump` instead of arming an asyncio timer."""

    # ------------------------------------------------------------------ wg(8)'s protocol, no socket
    def uapi_message(self, message: str) -> tuple[str, "uapi.UapiError | None"]:
        """Hand the daemon one message of WireGuard's configuration protocol (``get=1`` or
        ``set=1``, text up to its empty line) and get its reply: what the real daemon answers
        on ``/var/run/wireguard/IFNAME.sock`` (:func:`vpnedu.uapi.transact`, the same parsing,
        checks and :meth:`~vpnedu.node.base.Node.uapi_applied` -- so a set changes this Device
        in place and emits ``config.set``).  A simulated host has no file system to put a socket
        in; the course calls this instead."""
        return uapi.transact(self, message)

    def uapi_rebind(self, port: int | None, fwmark: int | None) -> None:
        """``listen_port`` on a simulated host: a new :class:`SimSocket` swapped in (a port in use
        is ``-EADDRINUSE``, and nothing of the message changes).  A simulated socket has no
        fwmark: it is kept, as a number, for ``get=1`` to report."""
        if port is not None and port != self.listen_port:
            try:
                new = SimSocket(self.host, port)
            except VpneduError as e:
                raise uapi.UapiError(uapi.EADDRINUSE, e.problem) from None
            old, self.sock = self.sock, new
            self.datapath.set_sockets({4: new})
            if old is not None:
                old.close()
            self.cfg.interface.listen_port = new.port
        if fwmark is not None:
            self.cfg.interface.fwmark = fwmark or None

    def pump(self) -> bool:
        """Do what the asyncio loop would do now: read waiting packets, run due timers.
        Returns True if anything was done."""
        did = False
        datapath = self.datapath
        if self.tun is not None and self.tun.pending:
            datapath.on_tun_readable()
            did = True
        if self.sock is not None and self.sock.inbox:
            datapath.on_udp_readable()
            did = True
        now = self.clock()
        deadline = self.device.next_deadline()
        if deadline is not None and deadline <= now:
            out = self.device.tick(now)
            if out:
                self._send(out)
                did = True
        return did


class SimServer(SimNode, Server):
    """The vpnedu server on a simulated host."""

    def __init__(self, cfg, host: SimHost, **kw):
        kw.setdefault("control", False)
        kw.setdefault("log", lambda s: None)
        Server.__init__(self, cfg, **kw)
        self.attach(host)

    def setup_role(self) -> None:
        """Forwarding plus masquerade for the tunnel subnets, both families (the real one uses
        sysctls and an nftables table of family ``ip`` and one of ``ip6``)."""
        if self.forwarding == "none":
            return
        host = self.host
        was = host.forwarding
        host.forwarding = True
        self._undo.append(lambda: setattr(host, "forwarding", was))
        if not was:
            self.changes.append("enabled IPv4 forwarding (net.ipv4.ip_forward = 1)")
            if any(a.version == 6 for a in self.cfg.interface.addresses):
                self.changes.append("enabled IPv6 forwarding (net.ipv6.conf.all.forwarding = 1)")
        for a in self.cfg.interface.addresses:
            rule = (a.network, self.ifname)
            host.masquerade.append(rule)
            self._undo.append(lambda rule=rule: host.masquerade.remove(rule))
            self._undo.append(host.clear_flows)
            self.changes.append(f"masquerade {a.network} leaving any interface but {self.ifname} "
                                "(simulated nftables table)")
            family = "ip" if a.version == 4 else "ip6"
            self.events.emit("nat.added", None, table=f"vpnedu_{self.ifname}", subnet=str(a.network),
                             ruleset=f"{family} saddr {a.network} oifname != \"{self.ifname}\" masquerade")

    def start(self) -> None:
        """A server just waits for initiations."""


class SimClient(SimNode, Client):
    """The vpnedu client on a simulated host."""

    def __init__(self, cfg, host: SimHost, **kw):
        kw.setdefault("control", False)
        kw.setdefault("log", lambda s: None)
        Client.__init__(self, cfg, **kw)
        self.attach(host)

    def uapi_rebind(self, port: int | None, fwmark: int | None) -> None:
        self.refuse_mark_change(fwmark)      # as the real client (vpnedu.node.client)
        SimNode.uapi_rebind(self, port, fwmark)

    def setup_role(self) -> None:
        """The real client's route plan, applied to the simulated host as the real client applies
        it: a ``/0`` by policy routing (the socket's fwmark, a table of its own, two rules), the
        other prefixes as routes in the main table, for IPv4 and IPv6 alike."""
        import ipaddress

        from ..net import killswitch, routes
        host = self.host
        self.routes_before = host.table() + host.table(6)
        table = self.cfg.interface.route_table
        for dst, gateway, dev in self.plan_routes(host.route_to):
            net = ipaddress.ip_network(dst)
            if net.prefixlen == 0 and table is None:
                mark = self.policy_table = self.cfg.interface.fwmark or routes.DEFAULT_TABLE
                self.sock.mark = self.cfg.interface.fwmark = mark    # as the real client: wg show says it
                route = host.add_route(dst, None, dev, table=mark)
                self.added.append((routes.Route(dst, None, dev), mark))
                for rule in routes.full_tunnel_rules(net.version, mark):
                    host.add_rule(rule)
                    self.rules_added.append(rule)
                    self._undo.append(lambda rule=rule: host.remove_rule(rule))
                continue
            route = host.add_route(dst, gateway, dev, table=table)
            self.added.append((routes.Route(dst, gateway, dev), table))
            if dev != self.ifname:  # routes on the TUN device go when it goes
                self._undo.append(lambda route=route: host.remove_route(route, table))
        self.routes_after = host.table() + host.table(6)
        self.report_route_change()
        # KillSwitch / BlockIPv6: the real client's plan (vpnedu.net.killswitch), as an output
        # filter of the simulated host instead of an nftables table.
        guard = self.kill_switch = killswitch.plan(
            self.ifname, self.cfg.interface, self.server.allowed_ips, self.server.endpoint, ipv6=True,
            lan=lambda fam: [str(a.network) for a in host.addresses.get("eth0", []) if a.version == fam])
        if guard:
            host.output_filters.append(guard.verdict)
            self._undo.append(lambda: host.output_filters.remove(guard.verdict))
            self.changes.append(guard.describe() + " (simulated nftables table)")
            self.events.emit("killswitch.added", None, table=f"inet {guard.table}", reason=guard.reason,
                             families=", ".join(guard.status()["families"]), ruleset=guard.ruleset())

    def start(self) -> None:
        """What :meth:`Client.after_start` does first: send the handshake initiation."""
        self._send(self.device.initiate(self.server, self.clock()))
