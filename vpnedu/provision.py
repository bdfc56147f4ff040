"""Provisioning, PiVPN-style: a server config, then one config file per client.

``vpnedu server init`` writes ``server.conf`` with a fresh key pair, the
server's tunnel addresses and its UDP port.  ``vpnedu server add-client alice``
picks the next free address of each family (10.0.0.2 and fdXX:...::2, then .3 /
::3, ...), makes alice's keys and a pre-shared key, appends her ``[Peer]`` to the
server's config and writes ``alice.conf``: a wg-quick file that works for
``vpnedu client`` and for WireGuard's own tools.  Every file holding a private
key is created with mode 0600.

Dual stack by default
---------------------

A tunnel that carries only IPv4 leaves a dual-stack client's IPv6 traffic outside it, under
the client's own address: the VPN then hides nothing from a site that has an AAAA record.  So
the tunnel gets an IPv6 subnet too, a *Unique Local Address* prefix (RFC 4193): ``fd`` followed
by a 40-bit Global ID and a 16-bit subnet ID, making a /48 of which the tunnel uses the first
/64.  RFC 4193 §3.2 asks for the Global ID to be *random*, not chosen ("fd00::" or
"fd42:42::" are the usual shortcuts), so that two networks that are later joined -- two VPNs on
one laptop, a VPN and a home router's ULA -- do not collide; ``init`` draws it from the
operating system's random source (§3.2.2's SHA-1 recipe is one way to get 40 random bits;
``os.urandom`` is another).  ``--ipv6-prefix fd..::/64`` picks it by hand, ``--ipv4-only``
gives today's IPv4-only tunnel.  A server config without an IPv6 address (every one written
before this) keeps working: its clients get IPv4 only.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from . import config as _config
from .config import Config, InterfaceConfig, PeerConfig
from .errors import VpneduError
from .protocol import keys

DEFAULT_SUBNET = "10.0.0.0/24"
#: The ULA block (RFC 4193 §3: fc00::/7 with the L bit set, "locally assigned").
ULA_LOCAL = ipaddress.ip_network("fd00::/8")


def random_ula_subnet(randbytes=os.urandom) -> ipaddress.IPv6Network:
    """A fresh ``fdXX:XXXX:XXXX::/64``: 40 random bits of Global ID (RFC 4193 §3.2), subnet 0."""
    global_id = int.from_bytes(randbytes(5), "big")
    return ipaddress.IPv6Network(((0xFD << 120) | (global_id << 80), 64))


def _ipv6_subnet(prefix: str | None) -> ipaddress.IPv6Network:
    if prefix is None:
        return random_ula_subnet()
    try:
        net = ipaddress.ip_network(prefix, strict=True)
    except ValueError:
        raise VpneduError(f"{prefix!r} is not an IPv6 subnet",
                          "write it like fd12:3456:789a::/64 (or leave it out for a random ULA prefix)") from None
    if net.version != 6:
        raise VpneduError(f"--ipv6-prefix {net} is an IPv4 subnet", "give an IPv6 one, e.g. fd12:3456:789a::/64")
    if net.prefixlen > 126:
        raise VpneduError(f"IPv6 subnet {net} is too small", "use a /64 (or at least a /126)")
    return net


def init_server(path: str | Path, *, endpoint: tuple[str, int] | None, port: int = _config.DEFAULT_PORT,
                subnet: str = DEFAULT_SUBNET, force: bool = False, suite: str = "wireguard",
                ipv6: bool = True, ipv6_subnet: str | None = None) -> Config:
    """A server config: ``Address = 10.0.0.1/24, fdXX:XXXX:XXXX::1/64`` (see "Dual stack by
    default"), or IPv4 only with ``ipv6=False``."""
    p = Path(path)
    if p.exists() and not force:
        raise VpneduError(f"{p} already exists", "use --force to overwrite it (its keys will be lost)")
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError:
        raise VpneduError(f"{subnet!r} is not a subnet", "write it like 10.0.0.0/24") from None
    if net.version != 4:
        raise VpneduError(f"--subnet {net} is not an IPv4 subnet",
                          "give the IPv4 one here (e.g. 10.0.0.0/24) and the IPv6 one with --ipv6-prefix")
    if net.num_addresses < 4:
        raise VpneduError(f"subnet {net} is too small", "use a /30 or larger, e.g. 10.0.0.0/24")
    if not ipv6 and ipv6_subnet:
        raise VpneduError("--ipv6-prefix and --ipv4-only contradict each other", "give one of them")
    server_ip = next(net.hosts())
    addresses = [ipaddress.ip_interface(f"{server_ip}/{net.prefixlen}")]
    if ipv6:
        net6 = _ipv6_subnet(ipv6_subnet)
        addresses.append(ipaddress.ip_interface(f"{net6.network_address + 1}/{net6.prefixlen}"))
    cfg = Config(InterfaceConfig(private_key=keys.generate_private_key(),
                                 addresses=addresses,
                                 listen_port=port, cipher_suite=suite,
                                 public_endpoint=(endpoint[0], endpoint[1] or port) if endpoint else None),
                 source=str(p))
    _config.save(cfg, p)
    return cfg


def add_client(server_conf: str | Path, name: str, *, out_dir: str | Path | None = None,
               endpoint: tuple[str, int] | None = None, split: bool = False, dns: list[str] | None = None,
               keepalive: int = 25) -> tuple[Path, PeerConfig, Config]:
    """Add a client to the server's config and write its own config file: the next free address
    of each family the server has (``10.0.0.2/24, fdXX::2/64``; the server routes ``/32`` and
    ``/128`` to it), and in the client's file ``AllowedIPs = 0.0.0.0/0, ::/0`` (full tunnel) or
    the tunnel's subnets (``split``).

    ``dns``: the client's ``DNS =``; None (not given) means the server's tunnel addresses when its
    DNS forwarder is on (``DNSForwarder``, :mod:`vpnedu.proxy.dns`), so the client's lookups go
    through the tunnel to the server; ``[]``: no ``DNS =`` line."""
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise VpneduError(f"client name {name!r} is not usable as a file name",
                          "use letters, digits, '-', '_' or '.'")
    sp = Path(server_conf)
    server = _config.load(sp)
    if any(p.name == name for p in server.peers):
        raise VpneduError(f"a client named {name!r} already exists in {sp}", "choose another name")
    itf = server.interface
    addr = next((a for a in itf.addresses if a.version == 4), None)
    if addr is None or itf.private_key is None:
        raise VpneduError(f"{sp} is not a server config (no IPv4 Address or PrivateKey)",
                          "create one with 'vpnedu server init'")
    ep = endpoint or itf.public_endpoint
    if ep is None:
        raise VpneduError("the server's public endpoint is unknown",
                          "pass --endpoint HOST:PORT (or give it to 'vpnedu server init --endpoint')")
    addr6 = next((a for a in itf.addresses if a.version == 6), None)
    used = {a.ip for a in itf.addresses} | {n.network_address for p in server.peers for n in p.allowed_ips}
    mine: list = []            # (the client's address, the server's route to it), per family
    for a in (addr, addr6):
        if a is None:
            continue
        free = next((h for h in a.network.hosts() if h not in used), None)
        if free is None:
            raise VpneduError(f"no free address left in {a.network}", "use a larger subnet")
        mine.append((ipaddress.ip_interface(f"{free}/{a.network.prefixlen}"),
                     ipaddress.ip_network(f"{free}/{free.max_prefixlen}")))
    if dns is None:
        dns = [str(a.ip) for a in (addr, addr6) if a is not None] if itf.dns_forwarder else []
    priv, psk = keys.generate_private_key(), keys.generate_psk()
    peer = PeerConfig(public_key=keys.public_key(priv), preshared_key=psk,
                      allowed_ips=[route for _, route in mine], name=name)
    server.peers.append(peer)
    if split:
        allowed = [a.network for a in (addr, addr6) if a is not None]
    else:
        allowed = [ipaddress.ip_network("0.0.0.0/0")] + ([ipaddress.ip_network("::/0")] if addr6 else [])
    client = Config(
        InterfaceConfig(private_key=priv, addresses=[a for a, _ in mine],
                        dns=list(dns or []), cipher_suite=itf.cipher_suite,
                        allow_null_teaching=itf.allow_null_teaching),
        [PeerConfig(public_key=keys.public_key(itf.private_key), preshared_key=psk,
                    allowed_ips=allowed, endpoint=ep, persistent_keepalive=keepalive, name="server")])
    out = Path(out_dir) if out_dir else sp.parent
    path = out / f"{name}.conf"
    if path.exists():
        raise VpneduError(f"{path} already exists", "remove it or choose another name")
    _config.save(client, path)
    _config.save(server, sp)
    return path, peer, server
