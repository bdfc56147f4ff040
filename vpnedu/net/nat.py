"""NAT with nftables: the server forwards clients' traffic under its own address.

A client's packets arrive from the tunnel with source 10.0.0.x, a private
address the internet cannot answer.  *Masquerading* rewrites the source of
each packet leaving the server to the server's own public address, and the
kernel's connection tracking rewrites the replies back.  So the application
server only ever sees the VPN server -- the seed's "spoofed src IP".

vpnedu puts its rule in a table of its own, so removing it is one command
that cannot touch anybody else's rules::

    table ip vpnedu_vpnedu0 {
        chain postrouting {
            type nat hook postrouting priority srcnat; policy accept;
            ip saddr 10.0.0.0/24 oifname != "vpnedu0" masquerade
        }
    }

In the same table, unless ``ClampMSS = false``, a chain in the forward hook clamps the MSS of
the TCP connections the server forwards (see :func:`clamp_rules`)::

        chain mss {
            type filter hook forward priority mangle; policy accept;
            iifname "vpnedu0" tcp flags syn tcp option maxseg size set rt mtu
            oifname "vpnedu0" tcp flags syn tcp option maxseg size set rt mtu
        }

The table is installed with :func:`replace_table`: one ``nft -f`` script that
declares the table, empties it and fills it again, which the kernel applies as
one transaction (nftables commits a whole batch of changes at once, or none of
them).  On a fresh host that simply creates it.  After a crash, when the dead
server's table is still there and still translating its clients' established
connections, it swaps the rules without a moment in which the table -- and with
it the kernel's NAT hook for those connections -- is missing.

``nft`` runs in a session of its own (:func:`run_nft`): a supervisor that stops
vpnedu by signalling its whole process group (coreutils ``timeout``, systemd, a
terminal's Ctrl-C) must not kill the ``nft`` that is removing the table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import TYPE_CHECKING

from ..errors import VpneduError

if TYPE_CHECKING:   # only for annotations: the journal imports this module's undo functions
    from .journal import Journal


def nft_path() -> str:
    path = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if path is None:
        raise VpneduError("nftables' 'nft' command is not installed",
                          "install it: apt-get install nftables (or use --forwarding none)")
    return path


def table_name(ifname: str) -> str:
    return "vpnedu_" + ifname.replace("-", "_")


#: Every chain vpnedu puts in its table, in any forwarding mode (nat: postrouting, and mss unless
#: ``ClampMSS = false``; proxy: prerouting and forward, see :mod:`vpnedu.net.tproxy`).
CHAINS = ("postrouting", "mss", "prerouting", "forward")


def run_nft(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``nft`` in a new session (``setsid``), out of reach of signals sent to vpnedu's
    process group, and wait for it."""
    return subprocess.run([nft_path(), *args], input=input, capture_output=True, text=True,
                          start_new_session=True)


def replace_table(name: str, ruleset_text: str, chains: tuple[str, ...], family: str = "ip") -> str:
    """The ``nft -f`` script that makes table ``ip name`` hold exactly ``ruleset_text`` (which
    declares ``chains``), in one transaction: create the table if it is missing, flush its
    rules, delete the chains of ours that the new rules do not use (``add chain`` first, so that
    deleting a chain that is not there is no error), then declare the chains and rules.  The
    chains that stay are never deleted, so their hooks stay registered throughout."""
    lines = [f"table {family} {name}", f"flush table {family} {name}"]
    for c in CHAINS:
        if c not in chains:
            lines += [f"add chain {family} {name} {c}", f"delete chain {family} {name} {c}"]
    return "\n".join(lines) + "\n" + ruleset_text


def _family(subnet: str) -> tuple[str, str]:
    """The nftables table family and address match for a subnet: ``ip``/``ip saddr`` for IPv4,
    ``ip6``/``ip6 saddr`` for IPv6 (an IPv6 subnet gets a table of its own beside the IPv4 one)."""
    return ("ip6", "ip6") if ":" in subnet else ("ip", "ip")


def clamp_rules(ifname: str) -> list[str]:
    """The MSS clamp: each TCP SYN and SYN-ACK forwarded into or out of the tunnel gets its MSS
    option lowered to what the route allows (``rt mtu``: the kernel's ``NFT_RT_TCPMSS``, the smaller
    of the MTUs of the routes toward the packet's destination and back toward its source, minus
    40 for IPv4 or 60 for IPv6 -- IP and TCP headers); an MSS already smaller stays as it is.

    Why: a client's TCP announces an MSS from its own tunnel's MTU, and the far end sends segments
    that big.  When the server's side of the path is narrower (its uplink, or its tunnel device's
    MTU), those segments do not fit; path MTU discovery would say so with ICMP "fragmentation
    needed" / "packet too big", but firewalls that drop ICMP are common, and then the handshake
    works, small pages load and large ones hang (RFC 2923, "PMTUD black holes").  A clamped MSS
    makes both ends send segments that fit from the first one.

    Only ``nat`` mode needs it.  In ``proxy`` mode the server terminates each TCP connection
    itself: its own kernel announces an MSS from the tunnel device's MTU toward the client and from
    the uplink's toward the destination, so there is nothing to clamp."""
    rule = "tcp flags syn tcp option maxseg size set rt mtu"
    return [f'iifname "{ifname}" {rule}', f'oifname "{ifname}" {rule}']


def ruleset(subnet: str, ifname: str, clamp_mss: bool = False) -> str:
    fam, match = _family(subnet)
    mss = ""
    if clamp_mss:
        # A chain of its own, not the proxy's "forward" (vpnedu.net.tproxy): after a crash in the
        # other mode, replace_table deletes the chains the new mode does not use and makes the
        # others afresh, so the table ends up as a fresh start makes it.
        mss = ("  chain mss {\n"
               "    type filter hook forward priority mangle; policy accept;\n"
               + "".join(f"    {r}\n" for r in clamp_rules(ifname))
               + "  }\n")
    return (f"table {fam} {table_name(ifname)} {{\n"
            f"  chain postrouting {{\n"
            f"    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    {match} saddr {subnet} oifname != \"{ifname}\" masquerade\n"
            f"  }}\n"
            f"{mss}"
            f"}}\n")


def install_masquerade(journal: Journal, subnet: str, ifname: str, clamp_mss: bool = False) -> str:
    """Install (or replace, see above) the masquerade table, with the MSS clamp of
    :func:`clamp_rules` if ``clamp_mss``; returns the ruleset text (for display).  A second
    subnet of the same family and start adds its masquerade rule to the table (the clamp is
    there already: it is per table, not per subnet); an IPv6 subnet's
    rule goes into the ``ip6`` table of the same name (IPv6 masquerading: RFC 6296 calls NAT66
    a bad idea in general, but here it is the point -- the application sees the server's IPv6
    address, not the client's ULA one, which it could not even answer)."""
    nft_path()
    name = table_name(ifname)
    fam, match = _family(subnet)
    text = ruleset(subnet, ifname, clamp_mss)
    if journal.has("nft-table", family=fam, name=name):
        script = f'add rule {fam} {name} postrouting {match} saddr {subnet} oifname != "{ifname}" masquerade\n'
    else:
        if journal.claim("nft-table", family=fam, name=name) is None:
            journal.record("nft-table", family=fam, name=name)
        script = replace_table(name, text, ("postrouting", "mss") if clamp_mss else ("postrouting",), fam)
    r = run_nft("-f", "-", input=script)
    if r.returncode != 0:
        raise VpneduError(f"nft refused the NAT table: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}",
                          "check that the kernel has nf_tables (modprobe nf_tables)")
    return text


def undo_nft_table(family: str, name: str) -> None:
    """Delete a table we made (the journal's undo of ``nft-table``).  A table that is already
    gone is fine (its undo ran before a crash); one that nft fails to delete -- netlink can answer
    EBUSY while another transaction runs -- is tried again, and still there after that is an
    error the journal reports, never a silent leftover."""
    nft = shutil.which("nft") or "/usr/sbin/nft"
    err = ""
    for attempt in range(5):
        r = subprocess.run([nft, "delete", "table", family, name], capture_output=True, text=True,
                           start_new_session=True)
        if r.returncode == 0:
            return
        err = r.stderr.strip().splitlines()[0] if r.stderr.strip() else f"exit status {r.returncode}"
        gone = subprocess.run([nft, "list", "table", family, name], capture_output=True,
                              start_new_session=True).returncode != 0
        if gone:
            return
        time.sleep(0.05 * (attempt + 1))
    raise VpneduError(f"could not delete nftables table {family} {name}: {err}",
                      f"delete it by hand: nft delete table {family} {name}")
