"""Handing clients' TCP and UDP flows to the server's userspace proxy (``--forwarding proxy``).

In ``nat`` mode the kernel forwards a client's packets and rewrites their
source (masquerade).  In ``proxy`` mode the server *terminates* each flow
itself and opens its own connection to the destination -- a transport-layer
proxy.  To do that without the client knowing, the kernel must deliver to a
local socket packets that are addressed to somebody else.  That is what
TPROXY does (Linux ``Documentation/networking/tproxy.rst``):

1. an nftables rule in the *prerouting* hook matches TCP and UDP arriving from
   the tunnel for addresses outside it, and says ``tproxy to :PORT`` (deliver
   to the proxy's socket on PORT, leaving the destination address untouched)
   and ``meta mark set MARK``;
2. a policy-routing rule ``fwmark MARK lookup TABLE`` with the single route
   ``local 0.0.0.0/0 dev lo`` in TABLE makes the kernel treat those packets as
   addressed to this host, instead of forwarding them;
3. the proxy's sockets carry ``IP_TRANSPARENT``: an accepted TCP connection's
   local address *is* the original destination (``getsockname``), and a UDP
   datagram's original destination comes with it (``IP_RECVORIGDSTADDR``).

A second chain drops whatever else would be *forwarded* from the tunnel to the
outside, so in proxy mode nothing leaves the server that the proxy did not send.
(ICMP echo never reaches the kernel: the server's datapath hands it to the
proxy directly, see :mod:`vpnedu.proxy.icmp`.)

Everything is journaled: one nftables table of ours, one rule, one route.  After
a crash the next start replaces each in place instead of deleting and re-adding
it (see :mod:`vpnedu.net.journal`): the table in one nftables transaction
(:func:`vpnedu.net.nat.replace_table`), the route with ``NLM_F_REPLACE``, and
the rule -- whose fwmark, table and priority are all there is to it -- is kept.
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
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)


def transparent_socket(kind: int, bind: tuple[str, int], *, original_destination: bool = False,
                       rcvbuf: int = 0) -> socket.socket:
    """A non-blocking socket with ``IP_TRANSPARENT``, bound to ``bind`` -- which may be an address
    that is not this host's: TPROXY delivers to it, and it may send as that address.  With
    ``original_destination``, each received datagram carries where it was going
    (``IP_RECVORIGDSTADDR``; read it with :func:`original_destination`)."""
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def original_destination(ancdata) -> tuple[str, int] | None:
    """The ``IP_ORIGDSTADDR`` control message of a ``recvmsg`` (a ``sockaddr_in``) as (address, port)."""
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntoa(data[4:8]), struct.unpack_from("!H", data, 2)[0]
    return None


#: The packet mark that says "deliver locally to the proxy" (ASCII "vpe").
MARK = 0x767065
#: The routing table holding the single ``local 0.0.0.0/0 dev lo`` route.
ROUTE_TABLE = 7670
RULE_PRIORITY = 7670


def ruleset(subnet: str, ifname: str, tcp_port: int, udp_port: int) -> str:
    t = table_name(ifname)
    match = f'iifname "{ifname}" ip daddr != {subnet} fib daddr type != local'
    return (f"table ip {t} {{\n"
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
    """Install (or replace, see above) the TPROXY table, the fwmark rule and the local route;
    returns the ruleset text."""
    nft_path()
    name = table_name(ifname)
    text = ruleset(subnet, ifname, tcp_port, udp_port)
    if journal.claim("nft-table", family="ip", name=name) is None:
        journal.record("nft-table", family="ip", name=name)
    r = run_nft("-f", "-", input=replace_table(name, text, ("prerouting", "forward")))
    if r.returncode != 0:
        last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else str(r.returncode)
        raise VpneduError(f"nft refused the proxy's TPROXY table: {last}",
                          "the kernel needs nf_tproxy and nft_tproxy (modprobe nft_tproxy), "
                          "or use --forwarding nat")
    rule = {"fwmark": MARK, "table": ROUTE_TABLE, "priority": RULE_PRIORITY}
    if journal.claim("policy-rule", **rule) is None:
        journal.record("policy-rule", **rule)
    if journal.claim("local-route", table=ROUTE_TABLE) is None:
        journal.record("local-route", table=ROUTE_TABLE)
    with IPRoute() as ipr:
        try:
            ipr.rule("add", **rule)
        except NetlinkError as e:
            if e.code != 17:   # EEXIST: the very same rule is there (a crashed server's): keep it
                raise VpneduError(f"cannot add the policy-routing rule for the proxy: {e.args[1]}") from None
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.route("replace", dst="0.0.0.0/0", type="local", scope=254, table=ROUTE_TABLE, oif=lo)
        except NetlinkError as e:
            raise VpneduError(f"cannot add the proxy's local route: {e.args[1]}") from None
    return text


def undo_policy_rule(fwmark: int, table: int, priority: int) -> None:
    with IPRoute() as ipr:
        try:
            ipr.rule("del", fwmark=fwmark, table=table, priority=priority)
        except NetlinkError:
            pass


def undo_local_route(table: int) -> None:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")
        try:
            ipr.route("del", dst="0.0.0.0/0", type="local", scope=254, table=table, oif=lo[0] if lo else None)
        except NetlinkError:
            pass
