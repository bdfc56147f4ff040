"""Provisioning, PiVPN-style: a server config, then one config file per client.

``vpnedu server init`` writes ``server.conf`` with a fresh key pair, the
server's tunnel address (10.0.0.1/24) and its UDP port.  ``vpnedu server
add-client alice`` picks the next free address (10.0.0.2, 10.0.0.3, ...),
makes alice's keys and a pre-shared key, appends her ``[Peer]`` to the
server's config and writes ``alice.conf``: a wg-quick file that works for
``vpnedu client`` and for WireGuard's own tools.  Every file holding a
private key is created with mode 0600.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from . import config as _config
from .config import Config, InterfaceConfig, PeerConfig
from .errors import VpneduError
from .protocol import keys

DEFAULT_SUBNET = "10.0.0.0/24"


def init_server(path: str | Path, *, endpoint: tuple[str, int] | None, port: int = _config.DEFAULT_PORT,
                subnet: str = DEFAULT_SUBNET, force: bool = False, suite: str = "wireguard") -> Config:
    p = Path(path)
    if p.exists() and not force:
        raise VpneduError(f"{p} already exists", "use --force to overwrite it (its keys will be lost)")
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except ValueError:
        raise VpneduError(f"{subnet!r} is not a subnet", "write it like 10.0.0.0/24") from None
    if net.num_addresses < 4:
        raise VpneduError(f"subnet {net} is too small", "use a /30 or larger, e.g. 10.0.0.0/24")
    server_ip = next(net.hosts())
    cfg = Config(InterfaceConfig(private_key=keys.generate_private_key(),
                                 addresses=[ipaddress.ip_interface(f"{server_ip}/{net.prefixlen}")],
                                 listen_port=port, cipher_suite=suite,
                                 public_endpoint=(endpoint[0], endpoint[1] or port) if endpoint else None),
                 source=str(p))
    _config.save(cfg, p)
    return cfg


def add_client(server_conf: str | Path, name: str, *, out_dir: str | Path | None = None,
               endpoint: tuple[str, int] | None = None, split: bool = False, dns: list[str] | None = None,
               keepalive: int = 25) -> tuple[Path, PeerConfig, Config]:
    """Add a client to the server's config and write its own config file."""
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
    used = {addr.ip} | {n.network_address for p in server.peers for n in p.allowed_ips}
    free = next((h for h in addr.network.hosts() if h not in used), None)
    if free is None:
        raise VpneduError(f"no free address left in {addr.network}", "use a larger subnet")
    priv, psk = keys.generate_private_key(), keys.generate_psk()
    peer = PeerConfig(public_key=keys.public_key(priv), preshared_key=psk,
                      allowed_ips=[ipaddress.ip_network(f"{free}/32")], name=name)
    server.peers.append(peer)
    client = Config(
        InterfaceConfig(private_key=priv, addresses=[ipaddress.ip_interface(f"{free}/{addr.network.prefixlen}")],
                        dns=list(dns or []), cipher_suite=itf.cipher_suite,
                        allow_null_teaching=itf.allow_null_teaching),
        [PeerConfig(public_key=keys.public_key(itf.private_key), preshared_key=psk,
                    allowed_ips=[addr.network] if split else [ipaddress.ip_network("0.0.0.0/0")],
                    endpoint=ep, persistent_keepalive=keepalive, name="server")])
    out = Path(out_dir) if out_dir else sp.parent
    path = out / f"{name}.conf"
    if path.exists():
        raise VpneduError(f"{path} already exists", "remove it or choose another name")
    _config.save(client, path)
    _config.save(server, sp)
    return path, peer, server
