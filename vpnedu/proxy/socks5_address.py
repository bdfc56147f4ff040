"""How SOCKS5 names a destination (RFC 1928 section 5), for the requests of :mod:`.socks5`
and the datagram headers of :mod:`.socks5_udp` alike, and which destinations the server's
SOCKS5 and HTTP proxies refuse.

An address is ``ATYP`` then the address: 1 and four bytes (IPv4), 4 and sixteen (IPv6), or 3, a
length byte and a domain name the *server* resolves (what ``socks5h://`` asks for).
"""

from __future__ import annotations

import ipaddress

#: Address types (section 5).
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 1, 3, 4


def domain_name(raw: bytes) -> str | None:
    """A DST.ADDR of type 3 as text, or ``None`` if it cannot name a host: empty, not ASCII, or
    with characters no host name has (letters, digits, ``-``, ``.`` and ``_`` only)."""
    try:
        host = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return host if host and all(c.isalnum() or c in "-._" for c in host) else None


def allowed_destination(address: str) -> bool:
    """Whether the proxy may connect there: not the server's own loopback (its private
    services), not unspecified (0.0.0.0 means "this host"), not multicast or link-local.
    Refused ones get 02, "connection not allowed by ruleset"."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local)
