"""The tunnel device's MTU when the config sets none: measured on the path, as wg-quick(8) does.

A packet that goes into the tunnel comes out of the host inside a WireGuard data message, inside a
UDP datagram, inside an IP packet.  What the tunnel device may carry is the path's MTU minus what
each packet gains on the way::

    outer IP header    20 (IPv4)  or  40 (IPv6)
    UDP header          8
    WireGuard          32  (the data message's 16-byte header -- type, receiver index,
                           counter -- and the AEAD's 16-byte tag)
    -------------------------------------------
    overhead           60 (IPv4)  or  80 (IPv6)

wg-quick always subtracts 80 (1420 on any Ethernet, whichever family the path is): safe for both,
at the cost of 20 bytes of every packet over IPv4.  vpnedu subtracts what the path's own family
needs (issue 17), 60 or 80: 1500 - 60 = 1440 over IPv4.

Which path, as wg-quick's ``set_mtu_up``:

* the route toward each peer's endpoint (``ip route get ENDPOINT``): the route's own ``mtu`` if it
  has one (``ip route add ... mtu 1400``, or a path MTU the kernel learnt from an ICMP "packet too
  big"), else its device's MTU; with several endpoints, the largest;
* with no endpoint (a server: its clients come to it), the default route of the main table.
  wg-quick reads IPv4's only (``ip route show default``); vpnedu reads both families' -- the
  server listens on both -- and takes the smaller result, so that its one device fits clients of
  either family;
* no route at all: 1500 (wg-quick's guess) - 80.

Then one step wg-quick does not take: the result is rounded down to a multiple of 16.  WireGuard
pads every packet to a multiple of 16, capped at the *sender's* MTU (paper 5.4.6,
:mod:`vpnedu.protocol.transport`).  Two wg-quick peers on 1500-byte paths both have 1420, and the
cap keeps every datagram within 1500.  Measured MTUs differ from peer to peer: a client behind a
1280-byte link takes 1280 - 60 = 1220, its server 1420, and the server pads each full-size
1220-byte packet for that client to 1232 -- a 1292-byte datagram for a 1280-byte link.  An IPv4
router may fragment it (vpnedu's datagrams carry no DF, :func:`vpnedu.net.udp.clear_df`); an IPv6
router never does: it drops it and answers "packet too big", which a firewall that filters ICMP
drops in turn -- a download that stalls.  A multiple of 16 pads to itself: 1216 fits whatever the
peer's MTU.  So the familiar 1500 - 80 = 1420 becomes 1408 (a dual-stack server on Ethernet);
1440 stays 1440.

Last, WireGuard's range: at least 1280 when the tunnel carries IPv6, the smallest MTU IPv6
allows (RFC 8200 section 5) -- Linux takes IPv6 off a device whose MTU is below it; over a
narrower path the tunnel's datagrams are then fragmented on the way out -- and at least 576 for
an IPv4-only tunnel (every IPv4 host takes a 576-byte datagram, RFC 791 and RFC 1122 3.3.3; the
smallest ``MTU =`` vpnedu accepts too); at most what the outer header's 16-bit length leaves.

An ``MTU =`` in the config always wins, as it is.  :func:`choose` is the decision, a pure
function of the paths (the unit tests give it route MTUs); :func:`measure` asks the kernel for
them (netlink, pyroute2).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable, Sequence

#: Per family: outer IP header (20 / 40) + UDP header (8) + WireGuard's data header and tag (32).
OVERHEAD = {4: 20 + 8 + 32, 6: 40 + 8 + 32}
#: IPv6's minimum link MTU (RFC 8200 section 5): a tunnel that carries IPv6 never goes below it.
MIN_MTU_IPV6 = 1280
#: The datagram every IPv4 host must accept (RFC 791, RFC 1122 3.3.3): an IPv4-only tunnel's floor.
MIN_MTU_IPV4 = 576
#: The largest IP packet (a 16-bit length): the outer packet's bound, so the tunnel's is less.
MAX_PACKET = 65535
#: wg-quick's guess when no route says anything (``mtu=1500`` in ``set_mtu_up``).
GUESS = 1500
#: WireGuard pads packets to a multiple of this (up to the sender's MTU): a measured MTU is one.
PADDING = 16


@dataclass(frozen=True)
class Path:
    """One way out that the tunnel's datagrams take, as the kernel's routing says."""

    #: ``endpoint``: the route toward a peer's endpoint; ``default``: a default route.
    kind: str
    family: int          # 4 or 6
    mtu: int
    dev: str | None = None
    #: The endpoint's address (for ``kind == "endpoint"``).
    address: str | None = None
    #: The MTU is the route's own (``mtu`` in ``ip route``), not its device's.
    route_mtu: bool = False

    def describe(self) -> str:
        where = f"route to {self.address}" if self.kind == "endpoint" else \
            f"{'IPv6 ' if self.family == 6 else ''}default route"
        via = f" via {self.dev}" if self.dev else ""
        return f"{where}{via} ({'route ' if self.route_mtu else ''}mtu {self.mtu}) - {OVERHEAD[self.family]}"


@dataclass(frozen=True)
class Choice:
    """The tunnel's MTU and why: ``source`` is one line for the log and ``vpnedu status``."""

    mtu: int
    source: str


def bounds(ipv6_inside: bool, family: int) -> tuple[int, int]:
    """The range of a tunnel's MTU: IPv6's minimum when the tunnel carries IPv6, else IPv4's; at
    most what an outer packet of ``family`` leaves."""
    return (MIN_MTU_IPV6 if ipv6_inside else MIN_MTU_IPV4), MAX_PACKET - OVERHEAD[family]


def choose(paths: Sequence[Path], *, ipv6_inside: bool, configured: int | None = None,
           where: str = "the config") -> Choice:
    """The tunnel's MTU (see the module docstring): ``configured`` (an ``MTU =``) if given, as it
    is; else the largest endpoint route's MTU minus its family's overhead; else (no endpoint) the
    smaller of the default routes' results; else wg-quick's 1500 - 80; then rounded down to a
    multiple of :data:`PADDING` and kept in WireGuard's range (:func:`bounds`).  ``ipv6_inside``: the tunnel carries IPv6 (an IPv6 Address)."""
    if configured is not None:
        return Choice(configured, f"MTU = {configured} in {where}")
    endpoints = [p for p in paths if p.kind == "endpoint"]
    defaults = [p for p in paths if p.kind == "default"]
    note = ""
    if endpoints:
        # wg-quick: the largest route MTU; on a tie the IPv6 path (the larger overhead) decides.
        best = max(endpoints, key=lambda p: (p.mtu, p.family))
        mtu, source = best.mtu - OVERHEAD[best.family], best.describe()
        if len(endpoints) > 1:
            source += f" (the largest of {len(endpoints)} endpoints' routes)"
        family = best.family
    elif defaults:
        best = min(defaults, key=lambda p: (p.mtu - OVERHEAD[p.family], -p.family))
        mtu, source, family = best.mtu - OVERHEAD[best.family], best.describe(), best.family
        for p in defaults:
            if p is not best:
                other = p.mtu - OVERHEAD[p.family]
                note += (f" (the IPv{p.family} default route's {p.mtu} - {OVERHEAD[p.family]} = {other} "
                         + ("too" if other == mtu else "is larger: one device serves clients of both families")
                         + ")")
    else:
        mtu, family = GUESS - OVERHEAD[6], 6
        source = f"no route to measure: {GUESS} (wg-quick's guess) - {OVERHEAD[6]}"
    low, high = bounds(ipv6_inside, family)
    if mtu % PADDING and mtu > low:
        down = max(mtu - mtu % PADDING, low)
        source += (f" = {mtu}, rounded down to {down} (a multiple of {PADDING}: WireGuard's padding "
                   "never takes a packet past it)")
        mtu = down
    if mtu < low:
        why = "IPv6's minimum (RFC 8200), and the tunnel carries IPv6" if ipv6_inside else \
            "the smallest datagram every IPv4 host accepts (RFC 791)"
        source += f" = {mtu}, raised to {low}: {why} (its datagrams are fragmented where the path is narrower)"
        mtu = low
    elif mtu > high:
        high -= high % PADDING
        source += f" = {mtu}, lowered to {high}: about the most an outer IPv{family} packet can carry"
        mtu = high
    return Choice(mtu, source + note)


# ---------------------------------------------------------------------- the IO: netlink
_AF = {4: 2, 6: 10}        # AF_INET, AF_INET6


def _oif(route) -> int | None:
    oif = route.get_attr("RTA_OIF")
    if oif is None:            # a multipath route: its first next hop's device
        hops = route.get_attr("RTA_MULTIPATH") or []
        oif = hops[0]["oif"] if hops else None
    return oif


def _path(kind: str, family: int, route, links: dict, address: str | None = None) -> Path | None:
    metrics = route.get_attr("RTA_METRICS")
    own = metrics.get_attr("RTAX_MTU") if metrics is not None else None
    oif = _oif(route)
    name, dev_mtu = links.get(oif, (None, None))
    if own:
        return Path(kind, family, int(own), name, address, route_mtu=True)
    if dev_mtu:
        return Path(kind, family, int(dev_mtu), name, address)
    return None


def measure(endpoints: Iterable[str], *, fwmark: int | None = None) -> list[Path]:
    """The paths :func:`choose` weighs, from the kernel: ``ip route get`` for each endpoint address
    (with the tunnel's socket mark, if it has one: the route its datagrams take), or with no
    endpoint the main table's default route of each family.  An endpoint without a route is left
    out (the client says so itself when it routes)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from .routes import MAIN_TABLE
    out: list[Path] = []
    with IPRoute() as ipr:
        links = {link["index"]: (link.get_attr("IFLA_IFNAME"), link.get_attr("IFLA_MTU"))
                 for link in ipr.get_links()}
        for address in dict.fromkeys(endpoints):
            family = ipaddress.ip_address(address).version
            kw = {"dst": address, "family": _AF[family]}
            if fwmark:
                kw["mark"] = fwmark
            try:
                route = ipr.route("get", **kw)[0]
            except NetlinkError:
                continue
            p = _path("endpoint", family, route, links, address)
            if p is not None:
                out.append(p)
        if out:
            return out
        for family in (4, 6):
            try:
                found = ipr.route("dump", family=_AF[family], table=MAIN_TABLE)
            except NetlinkError:      # no IPv6 in this kernel
                continue
            defaults = sorted((r for r in found if r["dst_len"] == 0 and r["type"] == 1),
                              key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
            for r in defaults:
                p = _path("default", family, r, links)
                if p is not None:
                    out.append(p)
                    break
    return out
