"""Cryptokey routing: the table that ties IP prefixes to peers (paper, section 2).

WireGuard's central idea is that a peer's public key and the addresses it may
use are one configuration entry, ``AllowedIPs``.  The same table answers two
questions:

* **Sending**: a packet for 10.0.0.7 goes to the peer whose AllowedIPs holds
  10.0.0.7 with the longest matching prefix (like a routing table).
* **Receiving**: a packet that decrypted with peer A's keys is accepted only if
  its *source* address looks up to peer A.  Authentication of the key thus
  becomes authentication of the source address.

It is **one** table for all peers, IPv4 and IPv6 alike: a prefix belongs to at most one peer.
Giving peer B a prefix that peer A holds moves it to B (as the kernel module's trie and
wireguard-go do), and a more specific prefix of B inside A's range takes that part of the range
over -- both for sending and for the source check.

The lookup keeps one dict per prefix length and tries only the lengths in use,
longest first: for a typical VPN that is two or three dict lookups.  A second index,
value -> its prefixes in the order they were given, answers "which prefixes does this peer
hold" (``wg show allowed-ips``) without scanning the table.  A prefix is stored as
``(version, length, network as an integer)``: 130,000 of them (one peer's AllowedIPs in
WireGuard's own conformance test) cost a few megabytes, not an ``ip_network`` object each.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, Iterable, Iterator, TypeVar

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A prefix as the table stores it: (4 or 6, prefix length, network address >> host bits).
Prefix = tuple[int, int, int]
BITS = {4: 32, 6: 128}


def prefix_of(network: str | Network) -> Prefix:
    """``"10.0.0.7/24"`` (host bits are ignored, as ``wg`` does) -> ``(4, 24, 0x0a0000)``."""
    net = ipaddress.ip_network(network, strict=False)
    v = net.version
    return v, net.prefixlen, int(net.network_address) >> (BITS[v] - net.prefixlen)


def network_of(prefix: Prefix) -> Network:
    """The inverse of :func:`prefix_of`."""
    v, length, key = prefix
    addr = key << (BITS[v] - length) if length else 0
    if v == 4:
        return ipaddress.IPv4Network((addr, length))
    return ipaddress.IPv6Network((addr, length))


def format_prefix(prefix: Prefix) -> str:
    """``"10.0.0.0/24"`` or ``"fd00::/64"`` (compressed), the text ``wg`` prints."""
    v, length, key = prefix
    addr = key << (BITS[v] - length) if length else 0
    if v == 4:
        return f"{addr >> 24}.{(addr >> 16) & 255}.{(addr >> 8) & 255}.{addr & 255}/{length}"
    return f"{ipaddress.IPv6Address(addr)}/{length}"


class AllowedIPs(Generic[T]):
    """Longest-prefix-match table from IP prefixes to values (peers)."""

    def __init__(self) -> None:
        # version -> prefix length -> network integer -> value
        self._tables: dict[int, dict[int, dict[int, T]]] = {4: {}, 6: {}}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self._bits = BITS
        # value -> its prefixes, in insertion order (a dict used as an ordered set)
        self._owned: dict[T, dict[Prefix, None]] = {}
        # value -> a number that changes whenever its prefixes do (see revision())
        self._rev: dict[T, int] = {}
        self._counter = 0

    def _touch(self, value: T) -> None:
        self._counter += 1
        self._rev[value] = self._counter

    def revision(self, value: T) -> int:
        """A number that is the same as long as ``value``'s prefixes are: a formatter may cache
        what it made of them (``wg show allowed-ips`` of 130,000 prefixes, asked 200 times)."""
        return self._rev.get(value, 0)

    def insert(self, network: str | Network, value: T) -> None:
        self.insert_prefix(prefix_of(network), value)

    def insert_prefix(self, prefix: Prefix, value: T) -> None:
        """Give ``prefix`` to ``value``; whoever held it before loses it."""
        v, length, key = prefix
        table = self._tables[v].get(length)
        if table is None:
            table = self._tables[v][length] = {}
            self._lengths[v] = sorted(self._tables[v], reverse=True)
        old = table.get(key)
        if old is not None and old is not value:
            owned = self._owned.get(old)
            if owned is not None:
                owned.pop(prefix, None)
            self._touch(old)
        table[key] = value
        owned = self._owned.get(value)
        if owned is None:
            owned = self._owned[value] = {}
        owned[prefix] = None
        self._counter += 1
        self._rev[value] = self._counter

    def remove(self, network: str | Network, value: T) -> bool:
        """Take ``network`` from ``value`` (only if ``value`` holds it); True if it did."""
        return self.remove_prefix(prefix_of(network), value)

    def remove_prefix(self, prefix: Prefix, value: T) -> bool:
        v, length, key = prefix
        table = self._tables[v].get(length)
        if table is None or table.get(key) is not value:
            return False
        del table[key]
        if not table:
            del self._tables[v][length]
            self._lengths[v] = sorted(self._tables[v], reverse=True)
        self._owned[value].pop(prefix, None)
        self._touch(value)
        return True

    def remove_value(self, value: T) -> None:
        """Remove every prefix that maps to ``value`` (a peer being removed, or its AllowedIPs
        replaced)."""
        owned = self._owned.pop(value, None)
        self._rev.pop(value, None)
        if not owned:
            return
        changed = set()
        for v, length, key in owned:
            table = self._tables[v].get(length)
            if table is not None and table.get(key) is value:
                del table[key]
                if not table:
                    del self._tables[v][length]
                    changed.add(v)
        for v in changed:
            self._lengths[v] = sorted(self._tables[v], reverse=True)

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

    def prefixes(self, value: T) -> list[Prefix]:
        """The prefixes ``value`` holds, in the order they were given."""
        return list(self._owned.get(value, ()))

    def networks(self, value: T) -> list[Network]:
        """The same, as ``ip_network`` objects."""
        return [network_of(p) for p in self._owned.get(value, ())]

    def count(self, value: T) -> int:
        return len(self._owned.get(value, ()))

    def entries(self) -> Iterable[tuple[Network, T]]:
        for value, owned in self._owned.items():
            for p in owned:
                yield network_of(p), value

    def __iter__(self) -> Iterator[tuple[Prefix, T]]:
        for value, owned in self._owned.items():
            for p in owned:
                yield p, value
