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
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ..errors import VpneduError
from .journal import UNDO, Journal


def nft_path() -> str:
    path = shutil.which("nft") or next((p for p in ("/usr/sbin/nft", "/sbin/nft") if os.path.exists(p)), None)
    if path is None:
        raise VpneduError("nftables' 'nft' command is not installed",
                          "install it: apt-get install nftables (or use --forwarding none)")
    return path


def table_name(ifname: str) -> str:
    return "vpnedu_" + ifname.replace("-", "_")


def ruleset(subnet: str, ifname: str) -> str:
    return (f"table ip {table_name(ifname)} {{\n"
            f"  chain postrouting {{\n"
            f"    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {subnet} oifname != \"{ifname}\" masquerade\n"
            f"  }}\n"
            f"}}\n")


def install_masquerade(journal: Journal, subnet: str, ifname: str) -> str:
    """Install the masquerade table; returns the ruleset text (for display)."""
    nft = nft_path()
    text = ruleset(subnet, ifname)
    journal.record("nft-table", family="ip", name=table_name(ifname))
    r = subprocess.run([nft, "-f", "-"], input=text, capture_output=True, text=True)
    if r.returncode != 0:
        raise VpneduError(f"nft refused the NAT table: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}",
                          "check that the kernel has nf_tables (modprobe nf_tables)")
    return text


def _undo_table(family: str, name: str) -> None:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    subprocess.run([nft, "delete", "table", family, name], capture_output=True)


UNDO["nft-table"] = _undo_table
