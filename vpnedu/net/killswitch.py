"""The client's kill switch and IPv6 block: nothing leaves the host outside the tunnel.

Routing decides where a packet goes; it does not promise that nothing else goes anywhere.  A
full tunnel's policy routing (:mod:`vpnedu.net.routes`) sends every packet into the tunnel --
as long as nobody asks otherwise.  But a program may bind its socket to the LAN interface
(``SO_BINDTODEVICE``: ``ping -I eth0``, WebRTC, some games and updaters), the host's resolver
may sit on the LAN (the main table's LAN route still answers for it: ``suppress_prefixlength
0`` suppresses only default routes), a DHCP client or a network manager may rewrite the routes,
and after a crash the rules are there while the device is not.  Each of these sends packets out
of the LAN interface in the clear, under the user's own address.  A *kill switch* is a firewall
that makes the promise routing cannot: it drops every packet that would leave the host by any
other way than the tunnel.

wg-quick(8) has none of its own; its man page (section "EXAMPLES") shows one as a ``PostUp``
line, "one might attempt the so-called kill-switch"::

    PostUp = iptables -I OUTPUT ! -o %i -m mark ! --mark $(wg show %i fwmark) -m addrtype ! --dst-type LOCAL -j REJECT

-- "not out of the tunnel device, not marked as the tunnel's own, not local: refused".
vpnedu does the same with nftables (nft(8)), for both families at once and for forwarded
packets too, as ``KillSwitch = true`` in the client's ``[Interface]`` (``false``, the
default, is wg-quick's behaviour: no firewall at all).  The table, for a full tunnel whose
server is 203.0.113.2 (``vpnedu status`` names it; ``nft list table inet
vpnedu-killswitch-vpnedu0`` shows it, with a ``comment`` on every rule saying why)::

    table inet vpnedu-killswitch-vpnedu0 {
        chain guard {
            oifname "lo" accept
            oifname "vpnedu0" accept
            meta mark 0x0000ca6c accept
            ip daddr 203.0.113.2 udp dport 51820 accept
            icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
            meta nfproto ipv4 udp sport 68 udp dport 67 accept
            ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept
        }
        chain output {
            type filter hook output priority filter; policy accept;
            jump guard
            counter reject with icmpx admin-prohibited
        }
        chain forward {
            type filter hook forward priority filter; policy accept;
            jump guard
            counter drop
        }
    }

Why each rule of ``guard`` is there (an ``accept`` there ends the base chain that jumped to it;
a packet no rule takes returns to the base chain's last rule):

* ``oifname "lo"``: loopback.  Local services (a resolver on 127.0.0.53, a local proxy) and
  packets to the host's *own* addresses, which the kernel routes through ``lo`` -- wg-quick's
  ``--dst-type LOCAL``.  None of it leaves the host.
* ``oifname "vpnedu0"``: anything going into the tunnel device.  This is the point: vpnedu
  encrypts it, and only the encrypted datagram leaves.
* ``meta mark 0x...``: the tunnel's own UDP datagrams.  A full tunnel's sockets carry the
  firewall mark (``SO_MARK``, wg-quick's ``FwMark``, 51820 by default) that its policy rule
  keys on -- wg-quick's ``-m mark --mark $(wg show %i fwmark)``.  The mark follows the server
  if it roams to another address.  (Setting a mark needs CAP_NET_ADMIN, so an ordinary
  program cannot borrow it to get out.)
* ``ip daddr <endpoint> udp dport <port>``: the tunnel's own datagrams again, by where they
  go -- for a tunnel without a mark (a split tunnel, ``Table = off``) the only way to know them.
* ICMPv6 neighbour discovery (RFC 4861; types 133-136: router solicitation and advertisement,
  neighbour solicitation and advertisement): IPv6's ARP.  Without it the host cannot find its
  router's link-layer address, and an IPv6 endpoint (``Endpoint = [2001:db8::2]:51820``) --
  or any IPv6 -- is unreachable.  ``ip6 hoplimit 255`` is what RFC 4861 requires of every
  genuine ND message (a router on the way would lower it), so the rule carries nothing beyond
  the link.  ARP needs no rule: it is not IP, and the ``inet`` family's hooks never see it.
* DHCP (client port 68 to server port 67; DHCPv6: 546 to ff02::1:2 port 547, RFC 8415): the
  host must keep its LAN address, or the tunnel dies with it.  wg-quick's man page notes that
  most DHCP clients send through ``PF_PACKET`` sockets, which netfilter never sees; but their
  unicast *renewals* go through ordinary UDP sockets, and those this rule lets out.  (What a
  ``PF_PACKET`` socket sends -- root's tcpdump, a DHCP client's raw frames -- no IP firewall
  stops: a kill switch is against leaks, not against root.)
* ``KillSwitch = lan`` adds the client's directly connected subnets (the addresses on its
  other interfaces, as they are at start-up) and the link-local multicast groups (224.0.0.0/24,
  ff02::/16: mDNS finding a printer), which routers never forward: the LAN stays reachable, the
  internet only through the tunnel.

Then the verdict for everything else, with a counter of how many packets it stopped.  What the
host itself sends is *rejected* (``reject with icmpx admin-prohibited``, as wg-quick's example
uses ``-j REJECT``): the kernel hands the program an error at once instead of letting it wait
for an answer that never comes -- ``ping`` prints "Packet filtered", a TCP connect fails with
"No route to host", a UDP send with "Operation not permitted" -- and the error message goes to
the host's own address through ``lo``: nothing reaches the wire.  What it forwards (containers,
VMs behind it, which wg-quick's OUTPUT-only example lets out) is dropped: an error to them
would have to leave outside the tunnel itself.

Why a table of its own, in the ``inet`` family: ``inet`` sees IPv4 and IPv6 in one table
(nft(8), "ADDRESS FAMILIES"), so no family is forgotten -- the iptables version needs a second
line for ip6tables, and forgetting it is the IPv6 leak below.  A table of its own is deleted in
one command without touching anybody else's rules.  And a ``drop`` or ``reject`` is final,
while an ``accept`` is not: nft(8) says an accept ends the evaluation of the *current* base
chain, and other base chains on the same hook (another firewall's tables) still see the
packet -- so no other table can open a hole in this one.

The table is in place from the start to the end of the client: before the first handshake and
before any route changes (so even the moment in which routes are half made is closed), and
while the server is unreachable and the client retries -- the tunnel device is still there, so
everything still goes into it and nowhere else.  It is made through the journal
(:mod:`vpnedu.net.journal`) as an ``nft-table`` change of family ``inet``, the kind NAT's
table is, so that even an older vpnedu's ``cleanup`` knows how to delete it; the journal undoes
newest first, so the routes go before it does.  After a ``kill -9`` it *stays* until the next
start or ``vpnedu cleanup``: a crashed client fails closed, which is what a kill switch is
for.  The next start takes it over and replaces it in one nftables transaction (as
:func:`vpnedu.net.nat.replace_table` does for NAT), so there is no moment without it; a next
start without the kill switch removes it.

The IPv6 block: an IPv4-only full tunnel on a dual-stack host
------------------------------------------------------------

``AllowedIPs = 0.0.0.0/0`` sends all IPv4 into the tunnel and leaves IPv6 alone: the host's
own IPv6 default route (from the LAN's router advertisements) stays in force, and every
website with an AAAA record -- which a dual-stack host prefers (RFC 6724) -- is reached
directly, from the user's own IPv6 address, while the user believes they are behind the
VPN.  This is the classic WireGuard IPv6 leak; it has been reported against wg-quick
configs again and again (pivpn/pivpn#978, trailofbits/algo#1562 with wg-quick on Linux,
StreisandEffect/streisand#1594), and the usual fix is to add ``::/0`` to AllowedIPs -- which
needs a server with IPv6.  So vpnedu blocks it: with ``BlockIPv6 = auto`` (the default), a
client whose AllowedIPs hold ``0.0.0.0/0`` and no IPv6 ``/0``, on a host with IPv6, gets the
table above for IPv6 only (its verdicts ``meta nfproto ipv6 counter reject ...`` and ``...
drop``): IPv6 into the tunnel device, neighbour discovery, DHCPv6, the tunnel's own datagrams
(an IPv6 endpoint) and the directly connected IPv6 subnets -- which a ``::/0`` tunnel would
also reach directly -- go; the rest is refused, and programs fall back to IPv4 at once (their
IPv6 attempt fails instead of timing out).  ``BlockIPv6 = true`` blocks IPv6 outside the
tunnel whatever AllowedIPs say; ``BlockIPv6 = false`` lets IPv6 go out directly, and with
``KillSwitch = true`` it exempts IPv6 from the kill switch too (which then guards IPv4 only).
``Table = off`` (no routes of vpnedu's) is left alone by ``auto``.

Neither key is a wg-quick key: they are vpnedu's own (:data:`vpnedu.config.VPNEDU_KEYS`) and
written to a file only when not the default, so a plain client file stays a wg-quick file.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import VpneduError
from . import nat

if TYPE_CHECKING:   # only for annotations
    from ..config import InterfaceConfig
    from .journal import Journal

#: The table's name is this and the tunnel's interface name (one table per tunnel).
TABLE_PREFIX = "vpnedu-killswitch-"
#: ICMPv6 neighbour discovery, types 133-136 (RFC 4861 section 4), by nft's names.
ND_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert")
#: Link-local multicast that ``KillSwitch = lan`` lets out too: never forwarded by routers
#: (224.0.0.0/24: RFC 5771; ff02::/16: link scope, RFC 4291).
LINK_MULTICAST = {4: "224.0.0.0/24", 6: "ff02::/16"}
_FAMILY_NAME = {4: "IPv4", 6: "IPv6"}


def table_name(ifname: str) -> str:
    """``vpnedu-killswitch-IFNAME``; characters nft(8) does not take in a name become ``_``."""
    return TABLE_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", ifname)


def has_ipv6() -> bool:
    """Whether this host (network namespace) has IPv6 at all (not ``ipv6.disable=1``)."""
    return os.path.exists("/proc/sys/net/ipv6")


@dataclass(frozen=True)
class Guard:
    """What the table guards and lets through: pure data, from which :meth:`ruleset` builds the
    nftables text (no system call)."""

    ifname: str
    #: The families whose packets are dropped outside the tunnel: (4, 6), (6,) or (4,).
    families: tuple[int, ...]
    #: The tunnel's UDP endpoint (the server), and its sockets' firewall mark if any.
    endpoint: tuple[str, int]
    mark: int | None = None
    #: Destinations let out directly (``KillSwitch = lan``, and the IPv6 block's LAN).
    lan: tuple[str, ...] = ()
    #: Why it is there, in the config's words ("KillSwitch = true", "BlockIPv6 = auto: ...").
    reason: str = ""

    @property
    def table(self) -> str:
        return table_name(self.ifname)

    def ruleset(self) -> str:
        """The table as ``nft -f`` reads it (and as close as can be to what ``nft list`` shows)."""
        fams = set(self.families)
        host, port = self.endpoint
        ep_fam = 6 if ":" in host else 4
        rules = ['oifname "lo" accept comment "loopback: local services, the host\'s own addresses"',
                 f'oifname "{self.ifname}" accept comment "into the tunnel: vpnedu encrypts it"']
        if self.mark:
            rules.append(f'meta mark {self.mark:#010x} accept comment "the tunnel\'s own UDP (its sockets\' fwmark)"')
        if ep_fam in fams:
            ip = "ip6" if ep_fam == 6 else "ip"
            rules.append(f'{ip} daddr {host} udp dport {port} accept comment "the tunnel\'s own UDP, to the server"')
        if 6 in fams:
            rules.append(f"icmpv6 type {{ {', '.join(ND_TYPES)} }} ip6 hoplimit 255 accept "
                         f'comment "IPv6 neighbour discovery (RFC 4861): IPv6\'s ARP"')
        if 4 in fams:
            rules.append('meta nfproto ipv4 udp sport 68 udp dport 67 accept comment "DHCP: keep the LAN address"')
        if 6 in fams:
            rules.append('ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept comment "DHCPv6: keep the LAN address"')
        for fam in (4, 6):
            nets = [n for n in self.lan if (":" in n) == (fam == 6)]
            if fam in fams and nets:
                ip = "ip6" if fam == 6 else "ip"
                rules.append(f"{ip} daddr {{ {', '.join(nets)} }} accept comment \"the local network\"")
        body = "".join(f"\t\t{r}\n" for r in rules)
        only = "" if fams == {4, 6} else f"meta nfproto ipv{next(iter(fams))} "
        what = "anything else" if fams == {4, 6} else f"any other {_FAMILY_NAME[next(iter(fams))]}"
        verdicts = {"output": f'{only}counter reject with icmpx admin-prohibited comment "{what} would leave '
                              'outside the tunnel: refused"',
                    "forward": f'{only}counter drop comment "{what} forwarded would leave outside the tunnel"'}
        hooks = "".join(f"\tchain {hook} {{\n\t\ttype filter hook {hook} priority filter; policy accept;\n"
                        f"\t\tjump guard\n\t\t{verdict}\n\t}}\n" for hook, verdict in verdicts.items())
        return f"table inet {self.table} {{\n\tchain guard {{\n{body}\t}}\n{hooks}}}\n"

    def verdict(self, dev: str, packet: bytes, mark: int = 0) -> str | None:
        """What the table does with ``packet`` about to leave by ``dev`` with firewall mark
        ``mark``: None (let out) or why it is refused -- the rules of :meth:`ruleset` in
        Python, in the same order, for the simulated lab (:mod:`vpnedu.sim.node`), which has no
        nftables.  (Neighbour discovery and DHCP do not exist in the simulation: no rule here.)"""
        if not packet:
            return None
        version = packet[0] >> 4
        if version not in self.families or dev in ("lo", self.ifname):
            return None
        if self.mark and mark == self.mark:
            return None
        dst = ipaddress.ip_address(bytes(packet[16:20] if version == 4 else packet[24:40]))
        host, port = self.endpoint
        header = (packet[0] & 0xF) * 4 if version == 4 else 40
        proto = packet[9] if version == 4 else packet[6]
        if (dst == ipaddress.ip_address(host) and proto == 17 and len(packet) >= header + 4
                and int.from_bytes(packet[header + 2:header + 4], "big") == port):
            return None
        if any(dst in ipaddress.ip_network(n) for n in self.lan if ipaddress.ip_network(n).version == version):
            return None
        return f"{self.reason}: {_FAMILY_NAME[version]} would leave by {dev} outside the tunnel (refused)"

    def describe(self) -> str:
        """One line for the client's list of host changes."""
        what = " and ".join(_FAMILY_NAME[f] for f in sorted(self.families))
        let = ["loopback", f"the tunnel's own UDP to {_endpoint(self.endpoint)}"
               + (f" (fwmark {self.mark:#x})" if self.mark else "")]
        if 6 in self.families:
            let.append("neighbour discovery")
        let.append("DHCP")
        if self.lan:
            let.append(f"the local network ({', '.join(self.lan)})")
        return (f"added nftables table inet {self.table} ({self.reason}): {what} leaving outside "
                f"{self.ifname} is dropped; let out: {', '.join(let)}")

    def status(self) -> dict:
        return {"table": f"inet {self.table}", "families": [_FAMILY_NAME[f] for f in sorted(self.families)],
                "reason": self.reason, "lan": list(self.lan)}


def _endpoint(ep: tuple[str, int]) -> str:
    return f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"


def plan(ifname: str, itf: InterfaceConfig, allowed_ips: Iterable, endpoint: tuple[str, int], *, ipv6: bool,
         lan: Callable[[int], list[str]] = lambda fam: []) -> Guard | None:
    """What the client's config asks for, or None (no table): the ``KillSwitch`` and
    ``BlockIPv6`` rules of the module docstring, without touching the host.  ``ipv6``: whether
    the host has IPv6; ``lan(family)``: the directly connected subnets of a family (only asked
    for when they are let through)."""
    kill = itf.kill_switch in ("on", "lan")
    block = itf.block_ipv6 or "auto"
    nets = [ipaddress.ip_network(n) for n in allowed_ips]
    full4 = any(n.version == 4 and n.prefixlen == 0 for n in nets)
    full6 = any(n.version == 6 and n.prefixlen == 0 for n in nets)
    families: set[int] = {4, 6} if kill else set()
    reason = f"KillSwitch = {'lan' if itf.kill_switch == 'lan' else 'true'}" if kill else ""
    if not kill and block == "on":
        families, reason = {6}, "BlockIPv6 = true"
    elif not kill and block == "auto" and full4 and not full6 and itf.table != "off":
        families, reason = {6}, "BlockIPv6 = auto: an IPv4-only full tunnel, IPv6 blocked rather than leaked"
    if block == "off" or not ipv6:
        families.discard(6)
    if not families:
        return None
    allowed_lan: list[str] = []
    for fam in sorted(families):
        # The LAN: with KillSwitch = lan; and for the IPv6 block alone, what a ::/0 tunnel
        # would also reach directly (the main table's connected routes beat its default).
        if itf.kill_switch == "lan" or (not kill and fam == 6):
            allowed_lan += [*lan(fam), *([LINK_MULTICAST[fam]] if itf.kill_switch == "lan" else [])]
    return Guard(ifname, families=tuple(sorted(families)), endpoint=endpoint, mark=itf.fwmark,
                 lan=tuple(dict.fromkeys(allowed_lan)), reason=reason)


def connected_subnets(family: int, skip: Iterable[str]) -> list[str]:
    """The subnets of this host's addresses of ``family`` on every interface but ``skip`` (the
    tunnel, loopback), as they are now: e.g. 198.51.100.0/24, 2001:db8:c::/64, fe80::/64."""
    from pyroute2 import IPRoute
    skip = set(skip)
    out = []
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2 if family == 4 else 10):
            if names.get(a["index"]) in skip:
                continue
            addr = a.get_attr("IFA_ADDRESS")
            if addr:
                net = str(ipaddress.ip_network(f"{addr}/{a['prefixlen']}", strict=False))
                if net not in out:
                    out.append(net)
    return out


def setup(journal: Journal, ifname: str, itf: InterfaceConfig, allowed_ips: Iterable,
          endpoint: tuple[str, int], log: Callable[[str], None] = print) -> Guard | None:
    """Plan the table for this client (see :func:`plan`) and install it; None if the config
    asks for none.  Called by the client before any route changes and before the first
    handshake."""
    allowed_ips = list(allowed_ips)
    ipv6 = has_ipv6()
    guard = plan(ifname, itf, allowed_ips, endpoint, ipv6=ipv6,
                 lan=lambda fam: connected_subnets(fam, skip=(ifname, "lo")))
    if itf.kill_switch in ("on", "lan") and not any(ipaddress.ip_network(n).prefixlen == 0 for n in allowed_ips):
        log("note: KillSwitch with a split tunnel: only AllowedIPs (through the tunnel)"
            + (" and the local network" if itf.kill_switch == "lan" else "") + " can be reached")
    if itf.kill_switch in ("on", "lan") and itf.block_ipv6 == "off" and ipv6:
        log("note: BlockIPv6 = false: the kill switch guards IPv4 only; IPv6 may leave outside the tunnel")
    if guard is None:
        return None
    install(journal, guard)
    return guard


def install(journal: Journal, guard: Guard) -> str:
    """Install (or replace in place, after a crash) the table, recording it in the journal
    first; returns the ruleset text."""
    if '"' in guard.ifname or "\\" in guard.ifname:
        raise VpneduError(f"the interface name {guard.ifname!r} cannot be written in an nftables rule",
                          "choose a name of letters, digits, '-' and '_'")
    try:
        nat.nft_path()
    except VpneduError:
        raise VpneduError(f"{guard.reason} needs nftables' 'nft' command, which is not installed",
                          "install it (apt-get install nftables), or set KillSwitch = false and "
                          "BlockIPv6 = false in the config") from None
    name, text = guard.table, guard.ruleset()
    if journal.claim("nft-table", family="inet", name=name) is None:
        journal.record("nft-table", family="inet", name=name)
    # One transaction: create if missing, empty, fill (the chains are always the same three).
    r = nat.run_nft("-f", "-", input=f"table inet {name}\nflush table inet {name}\n{text}")
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()[0] if r.stderr.strip() else f"exit status {r.returncode}"
        raise VpneduError(f"nft refused the kill switch table {name}: {err}",
                          "check that the kernel has nf_tables with the inet family (modprobe nf_tables)")
    return text
