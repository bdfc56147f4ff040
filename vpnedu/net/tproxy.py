"""Handing clients' TCP and UDP flows to the server's userspace proxy (``--forwarding proxy``).

In ``nat`` mode the kernel forwards a client's packets and rewrites their
source (masquerade).  In ``proxy`` mode the server *terminates* each flow
itself and opens its own connection to the destination -- a transport-layer
proxy.  To do that without the client knowing, the kernel must deliver to a
local socket packets that are addressed to somebody else.  That is what
TPROXY does (Linux ``Documentation/networking/tproxy.rst``, ``tproxy.txt`` in
older kernels; nftables' ``tproxy`` statement in nft(8)).  Three pieces, each
needed, for each address family:

1. an nftables rule in the *prerouting* hook matches TCP and UDP arriving from
   the tunnel for addresses outside it, and says ``tproxy to :PORT`` and
   ``meta mark set MARK``.  nft(8): tproxy "redirects the packet to a local
   socket without changing the packet header in any way" -- it only attaches
   the packet to our socket on PORT (the kernel's ``skb->sk``); the destination
   address stays the application server's;
2. so the *routing decision* that follows still sees a packet for another host,
   and would forward it (or drop it, with forwarding off).  A policy-routing
   rule ``fwmark MARK lookup TABLE`` with the single route ``local 0.0.0.0/0
   dev lo`` in TABLE (``local ::/0`` for IPv6) makes the kernel treat the marked
   packets -- and only them -- as addressed to this host: input, not forward,
   where the socket TPROXY chose receives them.  This is tproxy.txt's "ip rule
   add fwmark 1 lookup 100; ip route add local 0.0.0.0/0 dev lo table 100";
3. the proxy's sockets carry ``IP_TRANSPARENT`` (``IPV6_TRANSPARENT`` on an
   IPv6 socket; setting either needs CAP_NET_ADMIN or CAP_NET_RAW).  TPROXY
   hands packets only to sockets that have it (the kernel's nft_tproxy skips
   any other), and it is what lets a socket bind to, and send from, an address
   that is not the host's own
   (tproxy.txt: "you'll have to modify your application to allow it to send
   datagrams _from_ non-local IP addresses").  So an accepted TCP connection's
   local address *is* the original destination (``getsockname``), a UDP
   datagram's original destination comes with it (``IP_RECVORIGDSTADDR`` /
   ``IPV6_RECVORIGDSTADDR``, read by :func:`original_destination`), and a UDP
   reply can leave from the address the client asked.

IPv6 gets the same three pieces, beside IPv4's and apart from them: an ``ip6``
nftables table of the same name (as NAT mode's ip6 masquerade, see
:mod:`vpnedu.net.nat`), ``ip -6 rule`` / ``ip -6 route`` with the same mark and
table number (the two families' rules and tables are separate in the kernel),
and ``IPV6_V6ONLY`` sockets of its own on ``::`` (an IPv4 packet is never
handed to them).

A second chain drops whatever else would be *forwarded* from the tunnel to the
outside, so in proxy mode nothing leaves the server that the proxy did not send.
(ICMP echo -- ICMPv6 echo too -- never reaches the kernel: the server's datapath
hands it to the proxy directly, see :mod:`vpnedu.proxy.icmp`.)

Everything is journaled: per family one nftables table of ours, one rule, one
route (kinds ``policy-rule``/``local-route`` for IPv4, ``policy-rule6``/``local-route6``
for IPv6).  After a crash the next start replaces each in place instead of
deleting and re-adding it (see :mod:`vpnedu.net.journal`): the table in one
nftables transaction (:func:`vpnedu.net.nat.replace_table`), the route with
``NLM_F_REPLACE``, and the rule -- whose fwmark, table and priority are all
there is to it -- is kept.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import VpneduError
from .nat import nft_path, replace_table, run_nft, table_name

if TYPE_CHECKING:   # only for annotations: the journal imports this module's undo functions
    from .journal import Journal

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)   # = IP_ORIGDSTADDR, the cmsg's type
# linux/in6.h; Python's socket module does not name these two.
IPV6_RECVORIGDSTADDR = getattr(socket, "IPV6_RECVORIGDSTADDR", 74)   # = IPV6_ORIGDSTADDR
IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)
SOL_IPV6 = getattr(socket, "SOL_IPV6", socket.IPPROTO_IPV6)
#: Room for an ``IP_ORIGDSTADDR`` or ``IPV6_ORIGDSTADDR`` control message (a sockaddr_in6, 28 bytes).
ORIGDST_SPACE = socket.CMSG_SPACE(28)


def transparent_socket(kind: int, bind: tuple[str, int], *, original_destination: bool = False,
                       rcvbuf: int = 0) -> socket.socket:
    """A non-blocking socket with ``IP_TRANSPARENT``, bound to ``bind`` -- which may be an address
    that is not this host's: TPROXY delivers to it, and it may send as that address.  With
    ``original_destination``, each received datagram carries where it was going
    (``IP_RECVORIGDSTADDR``; read it with :func:`original_destination`).  An IPv6 address in
    ``bind`` (``::`` for all) makes an IPv6 socket: ``IPV6_TRANSPARENT``, ``IPV6_RECVORIGDSTADDR``,
    and ``IPV6_V6ONLY`` (IPv4 has sockets of its own)."""
    six = ":" in bind[0]
    s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if six:
            s.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
            if original_destination:
                s.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
        else:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            if original_destination:
                s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind(bind)
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


def listener(kind: int, version: int, port: int = 0, prefer: int = 0) -> socket.socket:
    """The proxy's TPROXY socket for IP ``version``: transparent, on all addresses (``0.0.0.0``
    or ``::``), on port ``prefer`` if that is free, else on ``port`` (0: one the kernel picks).
    A UDP one reports each datagram's original destination."""
    address = "::" if version == 6 else "0.0.0.0"
    for p in ((prefer, port) if prefer else (port,)):
        try:
            return transparent_socket(kind, (address, p), original_destination=kind == socket.SOCK_DGRAM)
        except OSError:
            if p == port:
                raise
    raise AssertionError("unreachable")


def original_destination(ancdata) -> tuple[str, int] | None:
    """The original destination in a ``recvmsg``'s control messages, as (address, port): the
    ``IP_ORIGDSTADDR`` message (a ``struct sockaddr_in``: family, port, 4-byte address) or the
    ``IPV6_ORIGDSTADDR`` one (a ``struct sockaddr_in6``: family, port, flow info, 16-byte address,
    scope id).  The family is in host byte order, the port in network order."""
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntoa(data[4:8]), struct.unpack_from("!H", data, 2)[0]
        if level == SOL_IPV6 and kind == IPV6_RECVORIGDSTADDR and len(data) >= 24:
            return socket.inet_ntop(socket.AF_INET6, bytes(data[8:24])), struct.unpack_from("!H", data, 2)[0]
    return None


#: The packet mark that says "deliver locally to the proxy" (ASCII "vpe").
MARK = 0x767065
#: The routing table holding the single ``local 0.0.0.0/0 dev lo`` route (``local ::/0`` for IPv6).
ROUTE_TABLE = 7670
RULE_PRIORITY = 7670


def _six(subnet: str) -> bool:
    return ":" in subnet


def ruleset(subnet: str, ifname: str, tcp_port: int, udp_port: int) -> str:
    """The TPROXY table for the tunnel's IPv4 subnet (``table ip``) or IPv6 one (``table ip6``:
    the same rules with ``ip6 daddr``; ``tproxy to :PORT`` then means an IPv6 socket)."""
    t = table_name(ifname)
    fam, match_ip = ("ip6", "ip6") if _six(subnet) else ("ip", "ip")
    match = f'iifname "{ifname}" {match_ip} daddr != {subnet} fib daddr type != local'
    return (f"table {fam} {t} {{\n"
            f"  chain prerouting {{\n"
            f"    type filter hook prerouting priority mangle; policy accept;\n"
            f"    {match} meta l4proto tcp tproxy to :{tcp_port} meta mark set {MARK:#x} accept\n"
            f"    {match} meta l4proto udp tproxy to :{udp_port} meta mark set {MARK:#x} accept\n"
            f"  }}\n"
            f"  chain forward {{\n"
            f"    type filter hook forward priority filter; policy accept;\n"
            f"    iifname \"{ifname}\" oifname != \"{ifname}\" counter drop\n"
            f"  }}\n"
            f"}}\n")


def install(journal: Journal, subnet: str, ifname: str, tcp_port: int, udp_port: int) -> str:
    """Install (or replace, see above) the TPROXY table, the fwmark rule and the local route
    for ``subnet``'s family (call it once per family); returns the ruleset text."""
    nft_path()
    six = _six(subnet)
    fam = "ip6" if six else "ip"
    name = table_name(ifname)
    text = ruleset(subnet, ifname, tcp_port, udp_port)
    if journal.claim("nft-table", family=fam, name=name) is None:
        journal.record("nft-table", family=fam, name=name)
    r = run_nft("-f", "-", input=replace_table(name, text, ("prerouting", "forward"), fam))
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else str(r.returncode)
        raise VpneduError(f"nft refused the proxy's TPROXY table: {last}",
                          "the kernel needs nf_tproxy and nft_tproxy (modprobe nft_tproxy), "
                          "or use --forwarding nat")
    rule = {"fwmark": MARK, "table": ROUTE_TABLE, "priority": RULE_PRIORITY}
    if six:   # the two families' rules and tables are separate things, journalled as such
        if journal.claim("policy-rule6", **rule) is None:
            journal.record("policy-rule6", **rule)
        if journal.claim("local-route6", table=ROUTE_TABLE) is None:
            journal.record("local-route6", table=ROUTE_TABLE)
    else:
        if journal.claim("policy-rule", **rule) is None:
            journal.record("policy-rule", **rule)
        if journal.claim("local-route", table=ROUTE_TABLE) is None:
            journal.record("local-route", table=ROUTE_TABLE)
    family = socket.AF_INET6 if six else socket.AF_INET
    v6 = "IPv6 " if six else ""
    with IPRoute() as ipr:
        try:
            ipr.rule("add", family=family, **rule)
        except NetlinkError as e:
            if e.code != 17:   # EEXIST: the very same rule is there (a crashed server's): keep it
                raise VpneduError(f"cannot add the {v6}policy-routing rule for the proxy: "
                                  f"{e.args[1]}") from None
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.route("replace", dst=_ANY[family], family=family, type="local", scope=254, table=ROUTE_TABLE,
                      oif=lo)
        except NetlinkError as e:
            raise VpneduError(f"cannot add the proxy's {v6}local route: {e.args[1]}") from None
    return text


_ANY = {socket.AF_INET: "0.0.0.0/0", socket.AF_INET6: "::/0"}


def undo_policy_rule(fwmark: int, table: int, priority: int, family: int = socket.AF_INET) -> None:
    with IPRoute() as ipr:
        try:
            ipr.rule("del", family=family, fwmark=fwmark, table=table, priority=priority)
        except NetlinkError:
            pass


def undo_local_route(table: int, family: int = socket.AF_INET) -> None:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        try:
            ipr.route("del", dst=_ANY[family], family=family, type="local", scope=254, table=table,
                      oif=lo[0] if lo else None)
        except NetlinkError:
            pass


def undo_policy_rule6(fwmark: int, table: int, priority: int) -> None:
    """The IPv6 rule (``ip -6 rule``): IPv6's rules are a list of their own."""
    undo_policy_rule(fwmark, table, priority, socket.AF_INET6)


def undo_local_route6(table: int) -> None:
    """The IPv6 ``local ::/0 dev lo`` route in the proxy's table."""
    undo_local_route(table, socket.AF_INET6)
