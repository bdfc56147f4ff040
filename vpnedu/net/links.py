"""Interfaces and their addresses, through netlink (pyroute2).

``ip addr add 10.0.0.2/24 dev vpnedu0`` and ``ip link set vpnedu0 mtu 1420 up``
are netlink messages to the kernel; pyroute2 sends the same messages from
Python.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import VpneduError

if TYPE_CHECKING:   # only for annotations: the journal imports this module's undo functions
    from .journal import Journal


def index_of(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def addresses() -> list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """Every (interface name, address/prefix) on this host."""
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr():
            out.append((names.get(a["index"], "?"),
                        ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")))
    return out


def local_addresses() -> set[str]:
    """This host's own IPv4 and IPv6 addresses (traffic to them is the server's, not the proxy's)."""
    return {str(a.ip) for _, a in addresses() if a.version in (4, 6)}


def check_no_clash(wanted: list, ifname: str) -> None:
    """Refuse an address (or subnet) that another interface already uses."""
    for other, have in addresses():
        if other == ifname:
            continue
        for w in wanted:
            if w.version != have.version or have.ip.is_loopback or have.ip.is_link_local:
                continue
            if w.ip == have.ip or (w.network.overlaps(have.network) and have.network.prefixlen > 0):
                raise VpneduError(f"address {w} clashes with {have} on interface {other}",
                                  "choose another tunnel subnet in Address, or remove the other address")


def configure(journal: Journal, ifname: str, addrs: list, mtu: int) -> None:
    """Give the interface its addresses and MTU and bring it up."""
    with IPRoute() as ipr:
        idx = index_of(ipr, ifname)
        if idx is None:
            raise VpneduError(f"interface {ifname} disappeared")
        ipr.link("set", index=idx, mtu=mtu)
        if not any(a.version == 6 for a in addrs):
            # No IPv6 in the tunnel: stop the kernel sending IPv6 router solicitations into it
            # (the setting belongs to the device and disappears with it).
            v6 = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
            if v6.exists():
                v6.write_text("1\n")
        else:
            # A WireGuard device has no link-local address (addr_gen_mode 1 = none): a layer-3
            # tunnel has no neighbours to solicit, and the kernel's router solicitations and MLD
            # reports would otherwise go to the peer, which drops them (no AllowedIPs for fe80::).
            gen = Path(f"/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode")
            if gen.exists():
                gen.write_text("1\n")
            # Like a WireGuard device, no ARP/neighbour discovery and no multicast (so no DAD
            # probes and no MLD reports either): IFF_NOARP set, IFF_MULTICAST cleared.
            ipr.link("set", index=idx, flags=0x80, mask=0x80 | 0x1000)
        for a in addrs:
            journal.record("addr", ifname=ifname, address=str(a.ip), prefixlen=a.network.prefixlen)
            try:
                ipr.addr("add", index=idx, address=str(a.ip), prefixlen=a.network.prefixlen)
            except NetlinkError as e:
                raise VpneduError(f"cannot add address {a} to {ifname}: {e.args[1]}") from None
        ipr.link("set", index=idx, state="up")


def undo_addr(ifname: str, address: str, prefixlen: int) -> None:
    with IPRoute() as ipr:
        idx = index_of(ipr, ifname)
        if idx is None:
            return  # the device is gone, and its addresses with it
        try:
            ipr.addr("del", index=idx, address=address, prefixlen=prefixlen)
        except NetlinkError:
            pass


def undo_link(ifname: str) -> None:
    with IPRoute() as ipr:
        idx = index_of(ipr, ifname)
        if idx is not None:
            try:
                ipr.link("del", index=idx)
            except NetlinkError:
                pass
