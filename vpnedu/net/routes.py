"""Routes and policy rules: which packets the kernel hands to the VPN (pyroute2 / netlink).

A client that sends *everything* through the tunnel must still reach the VPN server itself
over the normal network, or its encrypted packets would be routed into the tunnel they make
up.  vpnedu does it as wg-quick(8) does for an ``AllowedIPs`` of ``0.0.0.0/0`` or ``::/0``,
with *policy routing* (ip-rule(8)), once per address family:

1. the tunnel's UDP sockets mark every datagram they send with a firewall mark
   (``SO_MARK``; ``FwMark`` in the config, else the table's number, 51820);
2. a routing table of the tunnel's own (51820, or the next empty one) holds one route,
   ``default dev vpnedu0``;
3. ``ip rule add not fwmark 51820 table 51820``: every packet *without* the mark -- everything
   but the tunnel's own datagrams -- looks up that table, and so goes into the tunnel;
4. ``ip rule add table main suppress_prefixlength 0``, tried first: the main table still
   answers for everything more specific than a default route (the LAN, the tunnel's subnet,
   a route the administrator added), but its *default* route (prefix length 0) is ignored --
   that one is the tunnel's now.

Nothing in the main table changes, the old default route included, so the host goes back to
exactly what it was when the two rules go.  Unlike the older trick of ``0.0.0.0/1`` +
``128.0.0.0/1`` over the default route plus a host route to the server (still what
:mod:`vpnedu.exercises.routes` has students build: it needs no policy routing), it needs no
host route to follow the server's address, works the same for IPv6, and survives a DHCP
client replacing the default route.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import VpneduError
from .links import index_of

if TYPE_CHECKING:   # only for annotations: the journal imports this module's undo functions
    from .journal import Journal

FULL_TUNNEL_HALVES = ("0.0.0.0/1", "128.0.0.0/1")
#: The kernel's main routing table (``ip route`` shows it; rt_tables calls it "main").
MAIN_TABLE = 254
#: The first table (and fwmark) a full tunnel tries, as wg-quick: WireGuard's port number.
DEFAULT_TABLE = 51820
#: ``FIB_RULE_INVERT`` (linux/fib_rules.h): the rule matches packets that do *not* match it.
FIB_RULE_INVERT = 0x2
_FAMILY = {4: 2, 6: 10}       # AF_INET, AF_INET6


@dataclass(frozen=True)
class Route:
    dst: str
    gateway: str | None
    dev: str | None

    def __str__(self) -> str:
        s = self.dst
        if self.gateway:
            s += f" via {self.gateway}"
        if self.dev:
            s += f" dev {self.dev}"
        return s


def table(family: int = 4, table: int = MAIN_TABLE) -> list[Route]:
    """A routing table (the main one unless told), like ``ip route [show table N]`` prints it."""
    fam = 2 if family == 4 else 10
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for r in ipr.route("dump", family=fam, table=table):
            dst = r.get_attr("RTA_DST")
            dst = f"{dst}/{r['dst_len']}" if dst else "default"
            if dst.endswith("/32") and family == 4:
                dst = dst[:-3]
            out.append(Route(dst, r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF"))))
    return out


def free_table(start: int = DEFAULT_TABLE) -> int:
    """The first table from ``start`` on that holds no route of either family (wg-quick's
    choice for a full tunnel without FwMark)."""
    n = start
    while table(4, n) or table(6, n):
        n += 1
    return n


def route_to(address: str) -> Route:
    """How the kernel reaches ``address`` right now (``ip route get``)."""
    with IPRoute() as ipr:
        try:
            r = ipr.route("get", dst=address, family=_FAMILY[ipaddress.ip_address(address).version])[0]
        except NetlinkError as e:
            raise VpneduError(f"no route to the server's endpoint {address}: {e.args[1]}",
                              "check the network connection and the Endpoint in the config") from None
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return Route(address, r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF")))


def add(journal: Journal, dst: str, gateway: str | None, dev: str, table: int | None = None) -> Route:
    """Add a route of either family (to the main table, or to ``table``), recording it in the
    journal first."""
    net = ipaddress.ip_network(dst, strict=False)
    extra = {"table": table} if table else {}
    journal.record("route", dst=str(net), gateway=gateway, dev=dev, **extra)
    with IPRoute() as ipr:
        idx = index_of(ipr, dev)
        kw = {"dst": str(net), "oif": idx, "family": _FAMILY[net.version], **extra}
        if gateway:
            kw["gateway"] = gateway
        try:
            ipr.route("add", **kw)
        except NetlinkError as e:
            if e.code != 17:  # EEXIST: already there (e.g. a kernel-made subnet route)
                raise VpneduError(f"cannot add route {net} dev {dev}: {e.args[1]}") from None
    return Route(str(net), gateway, dev)


def undo_route(dst: str, gateway: str | None, dev: str, table: int | None = None) -> None:
    with IPRoute() as ipr:
        idx = index_of(ipr, dev)
        kw = {"dst": dst, "family": _FAMILY[ipaddress.ip_network(dst, strict=False).version],
              **({"table": table} if table else {})}
        if idx is not None:
            kw["oif"] = idx
        if gateway:
            kw["gateway"] = gateway
        try:
            ipr.route("del", **kw)
        except NetlinkError:
            pass


# ---------------------------------------------------------------------- policy rules
@dataclass(frozen=True)
class Rule:
    """One ``ip rule``: ``[not] fwmark M table T`` or ``table T suppress_prefixlength N``."""

    family: int
    table: int
    fwmark: int | None = None
    invert: bool = False
    suppress_prefixlength: int | None = None
    priority: int | None = None

    def __str__(self) -> str:
        s = f"ip -{self.family} rule" + (f" priority {self.priority}" if self.priority is not None else "")
        if self.fwmark is not None:
            s += f" {'not ' if self.invert else ''}fwmark {self.fwmark:#x}"
        s += f" table {'main' if self.table == MAIN_TABLE else self.table}"
        if self.suppress_prefixlength is not None:
            s += f" suppress_prefixlength {self.suppress_prefixlength}"
        return s

    def netlink(self) -> dict:
        kw: dict = {"family": _FAMILY[self.family], "table": self.table}
        if self.priority is not None:
            kw["priority"] = self.priority
        if self.fwmark is not None:
            kw["fwmark"] = self.fwmark
            kw["fwmask"] = 0xFFFFFFFF
        if self.invert:
            kw["flags"] = FIB_RULE_INVERT
        if self.suppress_prefixlength is not None:
            kw["suppress_prefixlen"] = self.suppress_prefixlength
        return kw


#: The priorities of a full tunnel's two rules: the ones wg-quick's rules get on a host with
#: only the kernel's default rules (``ip rule add`` without a priority takes the one just
#: before the first non-zero one: 32765, then 32764).  Lower numbers are tried first, so the
#: ``suppress_prefixlength 0`` rule comes before the fwmark rule, and both before the main
#: table's own rule (32766).
RULE_PRIORITIES = (32765, 32764)


def full_tunnel_rules(family: int, mark: int) -> list[Rule]:
    """The two rules of a full tunnel (see the module docstring), in the order they are added."""
    return [Rule(family, mark, fwmark=mark, invert=True, priority=RULE_PRIORITIES[0]),
            Rule(family, MAIN_TABLE, suppress_prefixlength=0, priority=RULE_PRIORITIES[1])]


def add_rule(journal: Journal, rule: Rule) -> Rule:
    """Add a policy rule (``ip rule add``), recording it in the journal first."""
    journal.record("rule", family=rule.family, table=rule.table, fwmark=rule.fwmark, invert=rule.invert,
                   suppress_prefixlength=rule.suppress_prefixlength, priority=rule.priority)
    with IPRoute() as ipr:
        try:
            ipr.rule("add", **rule.netlink())
        except NetlinkError as e:
            if e.code == 97:   # EAFNOSUPPORT: no IPv6 in this kernel
                raise VpneduError(f"cannot add '{rule}': this host has no IPv{rule.family}",
                                  "remove ::/0 from AllowedIPs (or enable IPv6)") from None
            raise VpneduError(f"cannot add '{rule}': {e.args[1]}") from None
    return rule


def undo_rule(family: int, table: int, fwmark: int | None = None, invert: bool = False,
              suppress_prefixlength: int | None = None, priority: int | None = None) -> None:
    """Delete the rule :func:`add_rule` added (the kernel deletes the first one that matches)."""
    rule = Rule(family, table, fwmark, invert, suppress_prefixlength, priority)
    with IPRoute() as ipr:
        try:
            ipr.rule("del", **rule.netlink())
        except NetlinkError:
            pass


def rules(family: int = 4) -> list[str]:
    """The policy rules of one family, as ``ip -N rule`` lists them (``PRIO: ...``)."""
    import subprocess
    r = subprocess.run(["ip", f"-{family}", "rule"], capture_output=True, text=True)
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]
