"""Cryptokey routing: the table that ties IP prefixes to peers (paper, section 2).

WireGuard's central idea is that a peer's public key and the addresses it may
use are one configuration entry, ``AllowedIPs``.  The same table answers two
questions:

* **Sending**: a packet for 10.0.0.7 goes to the peer whose AllowedIPs holds
  10.0.0.7 with the longest matching prefix (like a routing table).
* **Receiving**: a packet that decrypted with peer A's keys is accepted only if
  its *source* address looks up to peer A.  Authentication of the key thus
  becomes authentication of the source address.

The lookup keeps one dict per prefix length and tries only the lengths in use,
longest first: for a typical VPN that is two or three dict lookups.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, Iterable, TypeVar

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowedIPs(Generic[T]):
    """Longest-prefix-match table from IP prefixes to values (peers)."""

    def __init__(self) -> None:
        # version -> prefix length -> network integer -> value
        self._tables: dict[int, dict[int, dict[int, T]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self._bits = {4: 32, 6: 128}

    def insert(self, network: str | Network, value: T) -> None:
        net = ipaddress.ip_network(network, strict=False)
        v = net.version
        table = self._tables[v].setdefault(net.prefixlen, {})
        table[int(net.network_address) >> (self._bits[v] - net.prefixlen)] = value
        self._lengths[v] = sorted(self._tables[v], reverse=True)

    def remove_value(self, value: T) -> None:
        """Remove every prefix that maps to ``value`` (a peer being removed)."""
        for v, tables in self._tables.items():
            for length in list(tables):
                t = tables[length]
                for k in [k for k, x in t.items() if x is value]:
                    del t[k]
                if not t:
                    del tables[length]
            self._lengths[v] = sorted(tables, reverse=True)

    def lookup(self, address: bytes) -> T | None:
        """The value for a raw 4- or 16-byte address, or None."""
        if len(address) == 4:
            v, bits = 4, 32
        elif len(address) == 16:
            v, bits = 6, 128
        else:
            return None
        a = int.from_bytes(address, "big")
        tables = self._tables[v]
        for length in self._lengths[v]:
            hit = tables[length].get(a >> (bits - length))
            if hit is not None:
                return hit
        return None

    def entries(self) -> Iterable[tuple[Network, T]]:
        for v, tables in self._tables.items():
            bits = self._bits[v]
            for length, t in tables.items():
                for k, value in t.items():
                    cls = ipaddress.IPv4Address if v == 4 else ipaddress.IPv6Address
                    addr = cls(k << (bits - length) if length else 0)
                    yield ipaddress.ip_network(f"{addr}/{length}"), value
