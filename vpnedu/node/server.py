"""The VPN server: many clients, cryptokey routing, and forwarding to the internet.

On top of what every node does, the server

* listens on a fixed UDP port (``ListenPort``, 51820 by default) so clients can find it;
* routes between clients: a packet from 10.0.0.2 to 10.0.0.3 comes out of the
  tunnel, goes back into the kernel, which routes it to the TUN device again, and
  the core encrypts it for the peer whose AllowedIPs hold 10.0.0.3;
* forwards clients' traffic to the outside world under its own address, in one
  of two ways (``--forwarding`` or ``Forwarding =`` in the config):

  ``nat``    the kernel forwards the packets (``net.ipv4.ip_forward = 1``, and
             ``net.ipv6.conf.all.forwarding`` for IPv6) and an nftables masquerade rule
             (``ip`` and ``ip6`` tables) rewrites their source; connection tracking
             keeps the flows (``vpnedu status --flows`` lists them); the same table
             clamps forwarded TCP's MSS to the path (``ClampMSS``, :func:`vpnedu.net.nat.clamp_rules`);
  ``proxy``  the server terminates each TCP/UDP flow and ICMP echo itself and opens
             its own towards the destination (:mod:`vpnedu.proxy`), with TPROXY
             handing it the packets (:mod:`vpnedu.net.tproxy`);
  ``none``   clients reach only the server and each other.

  Both ``nat`` and ``proxy`` carry IPv4 and IPv6 alike: the app sees 203.0.113.2 or
  2001:db8:5::2, never a client's tunnel address.

After a restart it greets its clients: every peer whose authenticated endpoint it remembers
from the previous run (:mod:`vpnedu.node.peerstate`) gets a handshake initiation at once, so a
client's tunnel is back within a round trip instead of after the ~15 s the protocol's timers
take to notice a silent server.
"""

from __future__ import annotations

import asyncio
import os

from ..config import DEFAULT_PORT, check_server
from ..errors import VpneduError
from ..net import nat, sysctl
from .base import Node
from .peerstate import PeerMemory, PeerStateFile, default_path, greetable

FORWARDING_MODES = ("nat", "proxy", "none")
#: A greeting held back by the REKEY_TIMEOUT rate limit goes out this long after the limit ends.
GREET_MARGIN = 0.05


class Server(Node):
    role = "server"

    def __init__(self, cfg, *, forwarding: str | None = None, proxy_idle: dict[str, float] | None = None, **kw):
        if cfg.interface.listen_port is None:
            cfg.interface.listen_port = DEFAULT_PORT
        check_server(cfg)      # before anything on the host changes
        super().__init__(cfg, **kw)
        self.forwarding = forwarding or cfg.interface.forwarding or "nat"
        if self.forwarding not in FORWARDING_MODES:
            raise VpneduError(f"unknown forwarding mode {self.forwarding!r}", "choose nat, proxy or none")
        self.proxy_idle = proxy_idle
        self.proxy = None
        self.explicit = None       # SOCKS5 on the tunnel addresses (vpnedu.proxy.explicit)
        self.dns = None           # the DNS forwarder on the tunnel addresses (DNSForwarder, vpnedu.proxy.dns)
        self.peer_memory: PeerMemory | None = None
        self._greet_handle = None

    def setup_role(self) -> None:
        if self.forwarding != "none" or self.cfg.interface.dns_forwarder:
            self._raise_open_files()
        self._setup_dns()
        self._setup_forwarding()
        if self.forwarding != "none":
            from ..proxy.explicit import start_for
            self.explicit = start_for(self, peer_of=self._peer_label)

    def _raise_open_files(self) -> None:
        """Lift this process's soft limit on open files to the hard one.  Every connection the
        proxies carry holds two sockets (the client's end and the destination's), and a login
        shell's usual soft limit, 1024, would stop the server near 500 of them with EMFILE
        while the hard limit (often 524288 under systemd) allows far more -- the soft limit is
        there for programs that use select(2), which this one does not (Go's runtime, and so
        wireguard-go, lifts it the same way).  Only this process and its children see it."""
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                self.changes.append(f"raised this process's open-files limit from {soft} to {hard} "
                                    "(two sockets per proxied connection)")
            except (ValueError, OSError):
                pass

    def _setup_forwarding(self) -> None:
        if self.forwarding == "none":
            return
        old = sysctl.set_value(self.journal, "net.ipv4.ip_forward", "1")
        if old != "1":
            self.changes.append("enabled IPv4 forwarding (net.ipv4.ip_forward = 1)")
        if self.forwarding == "proxy":
            self._setup_proxy()
            return
        if any(a.version == 6 for a in self.cfg.interface.addresses) and os.path.exists("/proc/sys/net/ipv6"):
            # IPv6's switch is per interface and "all" sets them all; note that a forwarding
            # host ignores router advertisements (accept_ra = 1), so a server that learns its own
            # IPv6 default route from RAs needs accept_ra = 2 on that link.
            old6 = sysctl.set_value(self.journal, "net.ipv6.conf.all.forwarding", "1")
            if old6 != "1":
                self.changes.append("enabled IPv6 forwarding (net.ipv6.conf.all.forwarding = 1)")
        clamp = self.cfg.interface.clamp_mss      # ClampMSS (proxy mode needs none: see nat.clamp_rules)
        for a in self.cfg.interface.addresses:
            if a.version in (4, 6):
                text = nat.install_masquerade(self.journal, str(a.network), self.ifname, clamp_mss=clamp)
                self.changes.append(f"added nftables table {nat.table_name(self.ifname)}: masquerade "
                                    f"{a.network} leaving any interface but {self.ifname}"
                                    + ("; clamp forwarded TCP's MSS to the route's MTU" if clamp else ""))
                self.events.emit("nat.added", None, table=nat.table_name(self.ifname), subnet=str(a.network),
                                 ruleset=text)
        # Let connection tracking count bytes and note start times, for the flow table.
        for key in ("net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp"):
            try:
                if sysctl.set_value(self.journal, key, "1") != "1":
                    self.changes.append(f"enabled {key} (byte counts and ages in 'vpnedu status --flows')")
            except (OSError, VpneduError):
                pass

    # ------------------------------------------------------------------ proxy mode
    def _setup_proxy(self) -> None:
        from ..net import links, tproxy
        from ..proxy import Proxy
        nets = {a.version: str(a.network) for a in reversed(self.cfg.interface.addresses)}
        subnet, subnet6 = nets.get(4), nets.get(6)
        if subnet is None:
            raise VpneduError("proxy forwarding needs an IPv4 tunnel address", "add e.g. 'Address = 10.0.0.1/24'")
        if subnet6 is not None and not os.path.exists("/proc/sys/net/ipv6"):
            subnet6 = None   # a kernel without IPv6: the proxy serves IPv4 only
        self.proxy = Proxy(self.events, subnet=subnet, subnet6=subnet6,
                           local_addresses=links.local_addresses(), deliver=self._deliver,
                           inject=self._inject, peer_of=self._peer_label, idle=self.proxy_idle)
        ports = self.proxy.bind()
        if subnet6 is not None:
            # Between two clients' IPv6 addresses the kernel routes (from the TUN device back to
            # it), as net.ipv4.ip_forward does for IPv4; TPROXY itself needs no forwarding.
            if sysctl.set_value(self.journal, "net.ipv6.conf.all.forwarding", "1") != "1":
                self.changes.append("enabled IPv6 forwarding (net.ipv6.conf.all.forwarding = 1)")
        for net in (subnet, subnet6):
            if net is None:
                continue
            tcp_port, udp_port = ports[6 if ":" in net else 4]
            text = tproxy.install(self.journal, net, self.ifname, tcp_port, udp_port)
            fam, v6, anywhere = ("ip6", "IPv6 ", "::/0") if ":" in net else ("ip", "", "0.0.0.0/0")
            self.changes.append(f"added nftables table {fam} {nat.table_name(self.ifname)}: TPROXY {net}'s "
                                f"TCP to port {tcp_port} and UDP to port {udp_port}; drop other forwarded "
                                "traffic")
            self.changes.append(f"added {v6}policy routing: fwmark {tproxy.MARK:#x} -> table "
                                f"{tproxy.ROUTE_TABLE} (local {anywhere} dev lo)")
            self.events.emit("proxy.added", None, table=nat.table_name(self.ifname), subnet=net,
                             tcp_port=tcp_port, udp_port=udp_port, ruleset=text)
        self.intercept = self.proxy.intercept

    def _setup_dns(self) -> None:
        """Port 53 on the tunnel addresses, for the peers (in every forwarding mode: the server
        itself asks its resolvers).  Bound here, before the event loop, so a taken port stops the
        start in one line."""
        if not self.cfg.interface.dns_forwarder:
            return
        from ..proxy.dns import DnsForwarder, upstreams
        from ..proxy.flows import FlowTable
        ipv6 = os.path.exists("/proc/sys/net/ipv6")
        addresses = [str(a.ip) for a in self.cfg.interface.addresses if a.version == 4 or ipv6]
        servers = upstreams(skip=addresses)
        if not servers:
            self.log("note: /etc/resolv.conf names no resolver but the tunnel itself: the DNS forwarder "
                     "will answer SERVFAIL")
        self.dns = DnsForwarder(FlowTable(self.events), addresses=addresses, servers=servers,
                                allowed=self._peer_label)
        self.dns.bind()
        self.changes.append(f"DNS forwarder on {', '.join(addresses)} port 53 (UDP and TCP), for the peers, "
                            f"asking {', '.join(servers) or 'no resolver'}")

    def _deliver(self, packet: bytes) -> None:
        """Hand a packet from a client to the kernel, as if it had just come out of the tunnel."""
        try:
            self.tun.write(packet)
        except OSError:
            self.device.counters["dropped.tun-write"] += 1

    def _inject(self, packet: bytes) -> None:
        """Send a packet the proxy made (a reply, a RST) to a client through the tunnel."""
        self._send(self.device.send_packet(packet, self.clock()))

    def _peer_label(self, address: str) -> str | None:
        import ipaddress
        peer = self.device.peer_for(ipaddress.ip_address(address).packed)
        return peer.label if peer else None

    async def start_services(self) -> None:
        if self.proxy is not None:
            await self.proxy.start()
        if self.explicit is not None:
            await self.explicit.start()
        if self.dns is not None:
            if self.proxy is not None:
                self.dns.table = self.proxy.table    # the DNS flows in the proxy's flow table too
            await self.dns.start()

    async def stop_services(self) -> None:
        if self._greet_handle is not None:
            self._greet_handle.cancel()
        if self.peer_memory is not None:
            self.peer_memory.update()   # what a deferred update had not written yet
            self.peer_memory.close()
        if self.explicit is not None:
            await self.explicit.close()
        if self.proxy is not None:
            await self.proxy.close()
        if self.dns is not None:
            await self.dns.close()

    # ------------------------------------------------------------------ after a restart
    async def after_start(self) -> None:
        """Remember peers' endpoints from now on, and greet those remembered from before."""
        loop = asyncio.get_running_loop()
        file = PeerStateFile(default_path(self.ifname), interface=self.ifname, public_key=self.device.public_key)
        self.peer_memory = PeerMemory(self.device, file, log=self.log, schedule=loop.call_soon,
                                      clock=self.clock)
        peers = self.peer_memory.restore()
        self.peer_memory.watch(self.events)
        if peers:
            self.log(f"greeting {len(peers)} peer(s) at their last authenticated endpoints with a handshake "
                     "initiation (so their tunnels come back at once after this restart)")
            self._greet(peers)

    def _greet(self, peers) -> None:
        """Send a handshake initiation to each of ``peers`` that still needs one.  A peer we
        greeted less than REKEY_TIMEOUT ago (a previous process, just before this restart) is
        greeted when that time is up: the rate limit holds across restarts."""
        self._greet_handle = None
        dev, mem = self.device, self.peer_memory
        now = self.clock()
        later, sent = [], 0
        for peer in greetable(p for p in peers if dev.peers.get(p.public_key) is p):
            out = dev.initiate(peer, now)
            if out:
                self._send(out)
                sent += 1
            elif mem.greet_at(peer) > now:
                later.append(peer)
        if sent:
            mem.update()   # the initiation times are on disk before anything else can happen
            self.schedule_tick()
        if later:
            # A little past the limit: the previous process's initiation left its socket some
            # milliseconds after its clock reading (the Diffie-Hellman work comes in between).
            wait = min(mem.greet_at(p) for p in later) - now + GREET_MARGIN
            self._greet_handle = self._loop.call_later(wait, self._greet, later)

    def teardown(self) -> None:
        if self.proxy is not None:   # sockets opened by bind() but never started
            self.proxy.close_sockets()
        if self.explicit is not None:
            self.explicit.close_sockets()
        if self.dns is not None:
            self.dns.close_sockets()
        super().teardown()

    async def status_async(self) -> dict:
        st = self.status()
        if self.forwarding == "nat":
            from ..net import conntrack
            subnets = [str(a.network) for a in self.cfg.interface.addresses]
            if subnets:
                try:
                    loop, rows = asyncio.get_running_loop(), []
                    for subnet in subnets:        # IPv4's, then IPv6's (conntrack dumps one family at a time)
                        rows += await loop.run_in_executor(None, conntrack.flows, subnet)
                    st["flows"] = [r.to_dict() for r in rows] + st.get("flows", [])
                except Exception as e:  # conntrack unavailable: say so rather than fail the status
                    st["flows_error"] = f"{type(e).__name__}: {e}"
        return st

    def status(self) -> dict:
        st = super().status()
        st["forwarding"] = self.forwarding
        st["clamp_mss"] = self.forwarding == "nat" and self.cfg.interface.clamp_mss
        st["dns_forwarder"] = self.dns.status() if self.dns is not None else None
        if self.proxy is not None:
            st["flows"] = [r.to_dict() for r in self.proxy.flows()]
            st["flow_totals"] = {"opened": self.proxy.table.opened_total, "closed": self.proxy.table.closed_total}
        elif self.explicit is not None:
            st["flows"] = [r.to_dict() for r in self.explicit.flows()]
        st["proxy_sessions"] = self.explicit.sessions() if self.explicit is not None else {}
        usage = self.proxy_usage()
        st["proxy_usage"] = usage
        for p in st["peers"]:
            p["proxied"] = usage.get(p["label"], {})
        return st

    def proxy_usage(self) -> dict[str, dict[str, dict[str, int]]]:
        """What each peer has had the server's own services carry -- the transparent proxy,
        SOCKS5, the HTTP proxy, the DNS forwarder -- per protocol: flows and bytes each way
        (:meth:`~vpnedu.proxy.flows.FlowTable.usage`; NAT's flows are the kernel's and not
        counted here)."""
        tables = {id(t): t for t in (self.proxy and self.proxy.table, self.explicit and self.explicit.table,
                                     self.dns and self.dns.table) if t is not None}
        out: dict[str, dict[str, dict[str, int]]] = {}
        for t in tables.values():
            t.usage(into=out)
        return out
