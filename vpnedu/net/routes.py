"""Routes: which packets the kernel hands to the VPN (pyroute2 / netlink).

A client that sends *everything* through the tunnel must still reach the VPN
server itself over the normal network, or its encrypted packets would be routed
into the tunnel they make up.  vpnedu does it the way wg-quick's docs describe
for hosts without policy routing:

1. a host route to the server's public address via the original gateway, so
   the outer, encrypted packets keep the old path;
2. two routes ``0.0.0.0/1`` and ``128.0.0.0/1`` into the tunnel.  Together they
   cover every address, and each is more specific than the default route
   ``0.0.0.0/0``, so they win -- without deleting the original default route,
   which comes back into force the moment they are removed.
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


def route_to(address: str) -> Route:
    """How the kernel reaches ``address`` right now (``ip route get``)."""
    with IPRoute() as ipr:
        try:
            r = ipr.route("get", dst=address)[0]
        except NetlinkError as e:
            raise VpneduError(f"no route to the server's endpoint {address}: {e.args[1]}",
                              "check the network connection and the Endpoint in the config") from None
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        return Route(address, r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF")))


def add(journal: Journal, dst: str, gateway: str | None, dev: str, table: int | None = None) -> Route:
    """Add a route (to the main table, or to ``table``), recording it in the journal first."""
    net = ipaddress.ip_network(dst, strict=False)
    extra = {"table": table} if table else {}
    journal.record("route", dst=str(net), gateway=gateway, dev=dev, **extra)
    with IPRoute() as ipr:
        idx = index_of(ipr, dev)
        kw = {"dst": str(net), "oif": idx, **extra}
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
        kw = {"dst": dst, **({"table": table} if table else {})}
        if idx is not None:
            kw["oif"] = idx
        if gateway:
            kw["gateway"] = gateway
        try:
            ipr.route("del", **kw)
        except NetlinkError:
            pass
