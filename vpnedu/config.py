"""Configuration files in wg-quick's format, read and written.

A vpnedu config *is* a wg-quick config: an existing ``wg0.conf`` works
unchanged, and a file vpnedu writes works with ``wg-quick``::

    [Interface]
    PrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=
    Address = 10.0.0.2/24
    DNS = 10.0.0.1

    [Peer]
    # Name = server
    PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=
    AllowedIPs = 0.0.0.0/0
    Endpoint = 203.0.113.1:51820
    PersistentKeepalive = 25

Keys are case-insensitive and may repeat (``AllowedIPs`` lines add up), ``#``
starts a comment.  vpnedu adds a few keys of its own under clear names:

``CipherSuite`` (Interface)        ``wireguard`` (default), ``aes256gcm`` or ``null-teaching``
``AllowNullTeaching`` (Interface)  must be ``true`` before ``null-teaching`` is accepted
``Forwarding`` (Interface)         a server's way out for clients: ``nat`` (default), ``proxy`` or ``none``
``KillSwitch`` (Interface)         a client's kill switch: ``false`` (default, as wg-quick), ``true`` (nothing
                                   leaves the host outside the tunnel) or ``lan`` (the same, but the directly
                                   connected subnets stay reachable); see :mod:`vpnedu.net.killswitch`
``BlockIPv6`` (Interface)          ``auto`` (default: an IPv4-only full tunnel drops IPv6 leaving outside it
                                   instead of leaking it), ``true`` (always) or ``false`` (never)
``ClampMSS`` (Interface)           ``true`` (default): a server in ``nat`` mode lowers the MSS of forwarded
                                   TCP connections to the path's MTU (:mod:`vpnedu.net.nat`); ``false``: not
``DNSForwarder`` (Interface)       ``true`` (default): a server answers DNS on port 53 of its tunnel addresses
                                   for its peers (:mod:`vpnedu.proxy.dns`); ``false``: not
``# Name = ...`` (Peer)            a comment line, so wg ignores it; vpnedu names the peer
``# PublicEndpoint = ...`` (Interface)  a server's note of where clients reach it (for add-client)

The vpnedu keys are only written when they differ from the defaults (and
``AllowNullTeaching`` only beside the suite it unlocks), so a file for the ``wireguard``
suite stays a pure wg-quick file -- one that WireGuard's phone apps import from a QR code
(``add-client --qr``); they refuse any key they do not know.

Every wg-quick key either works as in wg-quick(8) or is refused by name -- none is
accepted and then ignored:

``Table``          ``auto``/``main`` (default): the client's routes go into the main table;
                   ``off``: no routes at all (policy routing is yours); a number: every
                   AllowedIPs prefix goes into that table, as wg-quick does
``FwMark``         the mark (``SO_MARK``) on the tunnel's UDP packets, like ``wg set fwmark``
``PreUp`` ...      ``PreUp``/``PostUp``/``PreDown``/``PostDown`` commands, run by ``bash -c``
                   with ``%i`` replaced by the interface name, only by root and only from a
                   file only root can write (see :mod:`vpnedu.node.wgquick`)
``SaveConfig``     ``false`` only: vpnedu never rewrites the file it runs from
``DNS``            name servers (IP addresses) and search domains (anything else), as
                   wg-quick; the client installs them while it runs (:mod:`vpnedu.net.resolver`);
                   an entry that is neither is refused by name
``MTU``            the tunnel device's MTU; without it the daemons measure the path as wg-quick
                   does, minus 60 over IPv4 or 80 over IPv6 (:mod:`vpnedu.net.mtu`); at least
                   1280 when the tunnel carries IPv6

Every error names the file, the line, what is wrong and how to fix it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .errors import ConfigError, FileRefused, KeyFormatError, SuiteError, VpneduError
from .protocol import keys as _keys
from .protocol.suites import SUITES, get_suite

DEFAULT_PORT = 51820
#: The range of ``MTU =``: 576, the datagram every IPv4 host accepts (RFC 791), to 65535 (a
#: tunnel that carries IPv6 needs 1280, checked with the addresses; see vpnedu.net.mtu).
MIN_MTU, MAX_MTU = 576, 65535
MIN_MTU_IPV6 = 1280

_INTERFACE_KEYS = {
    "privatekey": "PrivateKey", "listenport": "ListenPort", "fwmark": "FwMark",
    "address": "Address", "dns": "DNS", "mtu": "MTU", "table": "Table",
    "preup": "PreUp", "postup": "PostUp", "predown": "PreDown", "postdown": "PostDown",
    "saveconfig": "SaveConfig", "ciphersuite": "CipherSuite", "allownullteaching": "AllowNullTeaching",
    "forwarding": "Forwarding", "killswitch": "KillSwitch", "blockipv6": "BlockIPv6", "clampmss": "ClampMSS",
    "socksport": "SocksPort", "httpproxyport": "HTTPProxyPort", "proxyuser": "ProxyUser",
    "dnsforwarder": "DNSForwarder",
}
_PEER_KEYS = {
    "publickey": "PublicKey", "presharedkey": "PresharedKey", "allowedips": "AllowedIPs",
    "endpoint": "Endpoint", "persistentkeepalive": "PersistentKeepalive",
}
#: vpnedu's own [Interface] keys: wg-quick and WireGuard's apps do not know them (see the table above).
VPNEDU_KEYS = ("CipherSuite", "AllowNullTeaching", "Forwarding", "KillSwitch", "BlockIPv6", "ClampMSS",
               "SocksPort", "HTTPProxyPort", "ProxyUser", "DNSForwarder")
#: The explicit proxies' ports on the server's tunnel addresses when ``SocksPort`` /
#: ``HTTPProxyPort`` are not set.
DEFAULT_SOCKS_PORT, DEFAULT_HTTP_PROXY_PORT = 1080, 3128
#: wg-quick's hooks, in the order wg-quick runs them (wg-quick(8), "PreUp, PostUp, PreDown, PostDown").
HOOKS = ("PreUp", "PostUp", "PreDown", "PostDown")
#: Kernel routing tables a numbered ``Table`` may not name: 0 is "unspecified", 253 "default",
#: 254 "main" (write ``Table = main``), 255 "local" (the kernel's own).
_RESERVED_TABLES = {0: "unspecified", 253: "default", 254: "main", 255: "local"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = field(default=None, repr=False)   # a secret: never in a repr
    allowed_ips: list[Network] = field(default_factory=list)
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    name: str | None = None


@dataclass
class InterfaceConfig:
    private_key: bytes | None = field(default=None, repr=False)     # a secret: never in a repr
    addresses: list[Interface] = field(default_factory=list)
    listen_port: int | None = None
    mtu: int | None = None
    dns: list[str] = field(default_factory=list)
    cipher_suite: str = "wireguard"
    allow_null_teaching: bool = False
    #: A server's forwarding mode for clients' traffic to the outside (None: not set, i.e. nat).
    forwarding: str | None = None
    #: A client's kill switch (:mod:`vpnedu.net.killswitch`): None (not set: off), "on", "off" or "lan".
    kill_switch: str | None = None
    #: A client's IPv6 block: None (not set: auto), "auto", "on" or "off".
    block_ipv6: str | None = None
    #: A server's MSS clamp for forwarded TCP in nat mode (``ClampMSS``; on unless ``false``).
    clamp_mss: bool = True
    #: A server's SOCKS5 port on its tunnel addresses (``SocksPort``): None (not set: 1080), 0 (off).
    socks_port: int | None = None
    #: A server's HTTP proxy port on its tunnel addresses (``HTTPProxyPort``): None (3128), 0 (off).
    http_proxy_port: int | None = None
    #: A server's proxy users (``ProxyUser = NAME:PASSWORD``, repeatable), in file order.  The
    #: passwords are secrets in clear, like the private key beside them: the file is already
    #: written 0600 and refused when others can read it (see :func:`load`).  None configured:
    #: the proxies ask for no login (the tunnel has already authenticated the peer).
    proxy_users: list[tuple[str, str]] = field(default_factory=list, repr=False)
    #: A server's DNS forwarder on its tunnel addresses (``DNSForwarder``; on unless ``false``).
    dns_forwarder: bool = True
    #: Where clients reach this server (a server's own note, written as a comment line).
    public_endpoint: tuple[str, int] | None = None
    #: wg-quick's ``Table``: None (not set: auto), "auto", "main", "off" or a table number as text.
    table: str | None = None
    #: wg-quick's ``FwMark``: the SO_MARK of the tunnel's UDP socket (None: no mark).
    fwmark: int | None = None
    #: wg-quick's hooks: "PreUp"/"PostUp"/"PreDown"/"PostDown" -> the commands, in file order.
    hooks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def route_table(self) -> int | None:
        """The numbered table for the routes, or None (main table, or ``Table = off``)."""
        return int(self.table) if self.table and self.table.isdigit() else None

    @property
    def adds_routes(self) -> bool:
        """False for ``Table = off``: the client adds no route at all."""
        return self.table != "off"

    @property
    def public_key(self) -> bytes | None:
        return _keys.public_key(self.private_key) if self.private_key else None


@dataclass
class Config:
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: list[PeerConfig] = field(default_factory=list)
    source: str = "<config>"
    #: Owner and mode of the file it was read from (``fstat`` of the very file read), for the
    #: hooks' rule "only from a file only root can write"; None when not read from a file.
    file_uid: int | None = None
    file_mode: int | None = None

    def suite(self):
        """The chosen :class:`~vpnedu.protocol.suites.CipherSuite` (refusing null-teaching unless allowed)."""
        try:
            return get_suite(self.interface.cipher_suite, allow_insecure=self.interface.allow_null_teaching)
        except SuiteError as e:
            raise ConfigError(f"{self.source}: {e.problem}", e.fix) from None


def load(path: str | os.PathLike) -> Config:
    """Read a config file, with a clear error if it cannot be read.

    The file is read with :func:`vpnedu.files.read_bytes`: a regular file of at most
    :data:`vpnedu.files.CONFIG_LIMIT` bytes (``/dev/zero``, a FIFO or a directory is refused
    in one line instead of hanging)."""
    p = Path(path)
    try:
        got = files.read_bytes(p, "config", files.CONFIG_LIMIT,
                               fix="check the path, or create one with 'vpnedu server init' / "
                                   "'vpnedu server add-client NAME'")
        text = got.text()
    except FileRefused as e:
        raise ConfigError(e.problem, e.fix) from None
    cfg = loads(text, source=str(p))
    cfg.file_uid, cfg.file_mode = got.uid, got.mode
    if cfg.interface.private_key is not None:
        check_private(p, got.mode)
    return cfg


def check_private(path: Path, mode: int | None = None) -> None:
    """Refuse a file holding a private key that other users can read: whoever reads the key can
    impersonate this host to every peer (wg-quick only warns; vpnedu refuses).  ``mode`` is the
    mode of the file as read (else the path is looked at now)."""
    if mode is None:
        try:
            mode = path.stat().st_mode
        except OSError:
            return
    if mode & 0o004:
        raise ConfigError(f"{path} holds a private key but every user on this machine can read it "
                          f"(mode {mode & 0o777:04o})", f"run: chmod 600 {path}")


def loads(text: str, source: str = "<config>") -> Config:
    """Parse wg-quick INI text.

    Errors name the file, the line and the setting -- never the value of a key, and never a
    line that may hold one (see :func:`vpnedu.protocol.keys.shown`)."""
    cfg = Config(source=source)
    section: str | None = None
    peer: PeerConfig | None = None
    peer_line = 0
    seen_interface = False
    pending_name: str | None = None
    key_lines: dict[int, int] = {}       # id(peer) -> line of its PublicKey
    private_line = 0
    mtu_line = 0

    def err(lineno: int, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{source}:{lineno}: {problem}", fix)

    def finish_peer() -> None:
        if peer is not None and not peer.public_key:
            raise err(peer_line, "[Peer] has no PublicKey", "add 'PublicKey = <the peer's public key>'")

    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        m = re.match(r"#+\s*(name|publicendpoint)\s*=\s*(.+?)\s*$", line, re.IGNORECASE)
        if m:
            key, value = m.group(1).lower(), m.group(2)
            if key == "publicendpoint":
                if section == "interface":
                    try:
                        cfg.interface.public_endpoint = parse_endpoint(value)
                    except ValueError as e:
                        raise err(lineno, f"PublicEndpoint: {e}", _FIXES["Endpoint"]) from None
            elif section == "peer" and peer is not None:
                peer.name = value
            else:
                pending_name = value
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            # Exactly one pair of brackets around a word, as wg-quick's own parser wants:
            # '[[Interface]]' or '[Interface]]]' are typos, not sections.
            m = re.fullmatch(r"\[\s*([A-Za-z]+)\s*\]", line)
            name = m.group(1).lower() if m else None
            if name not in ("interface", "peer"):
                raise err(lineno, f"unknown section {_keys.shown(line)}",
                          "write [Interface] or [Peer], with one pair of brackets")
            finish_peer()
            if name == "interface":
                if seen_interface:
                    raise err(lineno, "a second [Interface] section", "a config has exactly one [Interface]")
                seen_interface = True
                section, peer = "interface", None
            else:
                section = "peer"
                peer = PeerConfig(public_key=b"", name=pending_name)
                pending_name = None
                peer_line = lineno
                cfg.peers.append(peer)
            continue
        if "=" not in line:
            raise err(lineno, f"expected 'Key = Value', got {_keys.shown(line)}", "write settings as 'Key = Value'")
        key, value = (x.strip() for x in line.split("=", 1))
        # base64 keys end in '=': split only at the first '=' and keep the rest.
        if section is None:
            raise err(lineno, f"{_keys.shown(key)} outside any section", "put it under [Interface] or [Peer]")
        known = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        canon = known.get(key.lower())
        if canon is None:
            where = "[Interface]" if section == "interface" else "[Peer]"
            other = _PEER_KEYS if section == "interface" else _INTERFACE_KEYS
            if key.lower() in other:
                raise err(lineno, f"{other[key.lower()]} belongs in {'[Peer]' if section == 'interface' else '[Interface]'}, "
                                  f"not in {where}", "move the line to the right section")
            raise err(lineno, f"unknown key {_keys.shown(key)} in {where}",
                      "check the spelling; known keys: " + ", ".join(known.values()))
        try:
            if section == "interface":
                _set_interface(cfg.interface, canon, value)
                if canon == "PrivateKey":
                    private_line = lineno
                elif canon == "MTU":
                    mtu_line = lineno
            else:
                _set_peer(peer, canon, value)
                if canon == "PublicKey":
                    key_lines[id(peer)] = lineno
        except (ValueError, KeyFormatError) as e:
            problem = e.problem if isinstance(e, KeyFormatError) else str(e)
            fix = e.fix if isinstance(e, KeyFormatError) else _FIXES.get(canon, "see 'man wg-quick'")
            raise err(lineno, f"{canon}: {problem}", fix) from None
    finish_peer()
    if not seen_interface:
        raise ConfigError(f"{source}: no [Interface] section", "start the file with [Interface] and a PrivateKey")
    v6 = next((a for a in cfg.interface.addresses if a.version == 6), None)
    if cfg.interface.mtu is not None and cfg.interface.mtu < MIN_MTU_IPV6 and v6 is not None:
        raise err(mtu_line, f"MTU: {cfg.interface.mtu} is too small for a tunnel that carries IPv6 (Address "
                            f"{v6}): IPv6 needs an MTU of at least {MIN_MTU_IPV6} (RFC 8200), and Linux takes "
                            "IPv6 off a smaller device",
                  f"use MTU = {MIN_MTU_IPV6} or more, or remove the line (vpnedu then measures the path)")
    own_private = cfg.interface.private_key
    own_public = cfg.interface.public_key
    first_line: dict[bytes, int] = {}
    for p in cfg.peers:
        at = key_lines.get(id(p), 0)
        if own_private is not None and p.public_key == own_private:
            raise err(at, "PublicKey is this file's own PrivateKey (from line "
                          f"{private_line}): a private key was pasted where the peer's public key belongs",
                      "put the peer's public key here ('vpnedu pubkey' prints it from the peer's private key)")
        if own_private is not None and p.preshared_key == own_private:
            raise err(at, "PresharedKey is this file's own PrivateKey", "make a pre-shared key with 'vpnedu genpsk'")
        if own_public is not None and p.public_key == own_public:
            raise err(at, "PublicKey is this interface's own public key",
                      "a [Peer] is the other side: put the peer's public key here")
        if p.public_key in first_line:
            raise err(at, f"two [Peer] sections with the same PublicKey (lines {first_line[p.public_key]} and {at})",
                      "each peer appears once; merge their AllowedIPs")
        first_line[p.public_key] = at
    return cfg


def check_server(cfg: Config) -> None:
    """What a *server's* config must hold besides what every WireGuard config may: checks that
    ``vpnedu server`` (and ``vpnedu conf check`` on a server's file) makes before it changes
    the host.

    * Each client's AllowedIPs are of a family the server has an Address of: an IPv4-only
      server (``server init --ipv4-only``) has no route, no forwarding and no masquerade for
      IPv6, so a client's IPv6 range there would be a silent black hole.
    * No two clients' AllowedIPs overlap.  WireGuard itself allows it -- cryptokey routing
      takes the longest prefix, so the more specific peer quietly takes over part of the
      other's range (the whitepaper, section 2) -- which is what a site-to-site setup may want,
      but on a server of clients it is always a typo or a copied [Peer]: one client's packets
      would go to another (``wg set`` and vpnedu-wg, which speak the protocol, still allow it).
    """
    families = {a.version for a in cfg.interface.addresses}
    ranges: list[tuple[int, int, int, Network, str]] = []
    for i, p in enumerate(cfg.peers, 1):
        who = f"[Peer] {p.name}" if p.name else f"[Peer] number {i} (PublicKey {_keys.encode(p.public_key)[:8]}...)"
        for net in p.allowed_ips:
            if families and net.version not in families:
                have = " and ".join(f"IPv{v}" for v in sorted(families))
                raise ConfigError(
                    f"{cfg.source}: {who}: AllowedIPs {net} is IPv{net.version}, but this server's Address is "
                    f"{have} only, so it could not route it",
                    f"remove {net}, or give the server an IPv{net.version} address too "
                    "(e.g. 'Address = 10.0.0.1/24, fd42:42::1/64')")
            ranges.append((net.version, int(net.network_address), int(net.broadcast_address), net, who))
    # Two prefixes are either nested or disjoint, so in address order a prefix overlaps an
    # earlier one exactly when it starts before the widest earlier end: n log n, not n^2, for a
    # server of 10,000 clients.
    ranges.sort(key=lambda r: (r[0], r[1], -r[2]))
    widest = None
    for r in ranges:
        if widest is not None and widest[0] == r[0] and r[1] <= widest[2] and widest[4] != r[4]:
            (_, _, _, a, owner), (_, _, _, b, who) = widest, r
            raise ConfigError(
                f"{cfg.source}: AllowedIPs {a} of {owner} and {b} of {who} overlap: the server "
                f"would send {b if b.num_addresses <= a.num_addresses else a} to only one of them",
                "give each client its own addresses ('vpnedu server add-client' picks free ones)")
        if widest is None or widest[0] != r[0] or r[2] > widest[2]:
            widest = r


def looks_like_server(cfg: Config) -> bool:
    """A server's file: peers without an Endpoint (clients find the server, not the other way),
    or more than one peer.  A client's has exactly one [Peer], the server, with an Endpoint."""
    return len(cfg.peers) > 1 or any(p.endpoint is None for p in cfg.peers)


_FIXES = {
    "Address": "write addresses with a prefix length, e.g. 'Address = 10.0.0.2/24'",
    "ListenPort": "use a UDP port number from 1 to 65535, e.g. 51820",
    "MTU": "use a number from 576 to 65535, e.g. 1420, or remove the line: vpnedu then measures the path",
    "AllowedIPs": "write prefixes separated by commas, e.g. 'AllowedIPs = 10.0.0.0/24, 0.0.0.0/0'",
    "Endpoint": "write host:port, e.g. 'Endpoint = 203.0.113.1:51820' or '[2001:db8::1]:51820'",
    "PersistentKeepalive": "use seconds from 1 to 65535, or 'off'",
    "CipherSuite": "choose one of: " + ", ".join(SUITES),
    "AllowNullTeaching": "use true or false",
    "Forwarding": "choose one of: nat, proxy, none",
    "KillSwitch": "write KillSwitch = true (nothing leaves outside the tunnel), lan (the same, but the local "
                  "network stays reachable) or false (the default)",
    "BlockIPv6": "write BlockIPv6 = auto (the default: block IPv6 beside an IPv4-only full tunnel), true "
                 "(always block IPv6 outside the tunnel) or false (never)",
    "ClampMSS": "use true (the default: clamp the MSS of forwarded TCP to the path) or false",
    "DNSForwarder": "use true (the default: answer the peers' DNS on the tunnel addresses, port 53) or false",
    "Table": "write Table = off, auto, main or a number such as 1234 (names from /etc/iproute2/rt_tables "
             "are not read: write the number)",
    "FwMark": "write a number such as 0x1234 or 51820, or 'off'",
    "SaveConfig": "remove the line or write SaveConfig = false",
    "DNS": "write name server addresses (and search domains) separated by commas, e.g. 'DNS = 10.0.0.1'",
    "SocksPort": "write SocksPort = 1080 (the default), another TCP port, or off",
    "HTTPProxyPort": "write HTTPProxyPort = 3128 (the default), another TCP port, or off",
    "ProxyUser": "write ProxyUser = NAME:PASSWORD, one line per user (no '#' in the password: it starts a comment)",
}


_q = _keys.shown   # how a value is quoted in an error: never a key


def override(cfg: Config, key: str, value: str, flag: str) -> None:
    """Set the [Interface] ``key`` from a command-line ``flag`` (which wins over the file, as
    ``--forwarding`` wins over ``Forwarding =``): parsed as the file's line would be, and a bad
    value is a one-line error naming the flag."""
    try:
        _set_interface(cfg.interface, key, value)
    except ValueError as e:
        raise ConfigError(f"{flag}: {e}", _FIXES.get(key, "see 'vpnedu server --help'")) from None


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{_q(value)} is not a port number")
    return int(value)


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{_q(value)} is not true or false")


#: The words a switch of vpnedu's own takes (KillSwitch, BlockIPv6): exactly these, any case.
_ON, _OFF = ("true", "yes", "on"), ("false", "no", "off")


def _switch(value: str, *extra: str) -> str:
    """``true``/``yes``/``on`` -> "on", ``false``/``no``/``off`` -> "off", or one of ``extra``
    (``lan``, ``auto``) as it is; anything else is refused (no ``1``, no ``enabled``: a setting
    that guards against leaks is either clearly on or refused)."""
    v = value.lower()
    if v in _ON:
        return "on"
    if v in _OFF:
        return "off"
    if v in extra:
        return v
    raise ValueError(f"{_q(value)} is not one of: {', '.join((*_ON, *_OFF, *extra))}")


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _set_interface(itf: InterfaceConfig, key: str, value: str) -> None:
    if key == "PrivateKey":
        itf.private_key = _keys.decode(value, "private key")
    elif key == "Address":
        for a in _list(value):
            try:
                itf.addresses.append(ipaddress.ip_interface(a))
            except ValueError:
                raise ValueError(f"{_q(a)} is not an IP address with prefix") from None
    elif key == "ListenPort":
        itf.listen_port = _port(value)
    elif key == "MTU":
        if not re.fullmatch(r"[0-9]+", value):
            raise ValueError(f"{_q(value)} is not a number")
        if not MIN_MTU <= int(value) <= MAX_MTU:
            raise ValueError(f"{int(value)} is {'too small' if int(value) < MIN_MTU else 'too large'} "
                             f"for an MTU ({MIN_MTU} to {MAX_MTU})")
        itf.mtu = int(value)
    elif key == "DNS":
        for d in _list(value):
            # wg-quick: an IP address is a name server, anything else a search domain.
            try:
                ipaddress.ip_address(d)
            except ValueError:
                if not is_domain(d):
                    raise ValueError(f"{_q(d)} is neither an IP address nor a domain name") from None
            itf.dns.append(d)
    elif key == "CipherSuite":
        if value.lower() not in SUITES:
            raise ValueError(f"unknown cipher suite {_q(value)}")
        itf.cipher_suite = value.lower()
    elif key == "AllowNullTeaching":
        itf.allow_null_teaching = _bool(value)
    elif key == "Forwarding":
        if value.lower() not in ("nat", "proxy", "none"):
            raise ValueError(f"unknown forwarding mode {_q(value)}")
        itf.forwarding = value.lower()
    elif key == "KillSwitch":
        itf.kill_switch = _switch(value, "lan")
    elif key == "BlockIPv6":
        itf.block_ipv6 = _switch(value, "auto")
    elif key == "ClampMSS":
        # Strictly true or false (a new key: no yes/on/1 to carry along).
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{_q(value)} is not true or false")
        itf.clamp_mss = value.lower() == "true"
    elif key == "SocksPort":
        itf.socks_port = 0 if value.lower() == "off" else _proxy_port(value)
    elif key == "HTTPProxyPort":
        itf.http_proxy_port = 0 if value.lower() == "off" else _proxy_port(value)
    elif key == "ProxyUser":
        itf.proxy_users.append(_proxy_user(value, itf.proxy_users))
    elif key == "DNSForwarder":
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{_q(value)} is not true or false")
        itf.dns_forwarder = value.lower() == "true"
    elif key == "Table":
        itf.table = _table(value)
    elif key == "FwMark":
        itf.fwmark = _fwmark(value)
    elif key in HOOKS:
        itf.hooks.setdefault(key, []).append(value)
    elif key == "SaveConfig":
        if _bool(value):
            raise ValueError("'true' asks to write the running state back into this file, "
                             "and vpnedu never rewrites the file it runs from")
    else:  # pragma: no cover - every key in _INTERFACE_KEYS has a branch above
        raise ValueError(f"{key} is not supported")


def _proxy_port(value: str) -> int:
    try:
        return _port(value)
    except ValueError:
        raise ValueError(f"{_q(value)} is not a port number (1-65535) or 'off'") from None


def _proxy_user(value: str, have: list[tuple[str, str]]) -> tuple[str, str]:
    """``NAME:PASSWORD`` for the explicit proxies (RFC 1929 carries each in at most 255 bytes;
    the password may hold colons, the name may not).  The value is never quoted in an error."""
    name, sep, password = value.partition(":")
    if not sep or not name or not password:
        raise ValueError("the value is not NAME:PASSWORD (both non-empty; the value is not shown)")
    if len(name.encode()) > 255 or len(password.encode()) > 255:
        raise ValueError("NAME and PASSWORD must be at most 255 bytes each (RFC 1929; value not shown)")
    if any(n == name for n, _ in have):
        raise ValueError(f"user {_q(name)} is already defined")
    return name, password


def is_domain(name: str) -> bool:
    """A search domain resolv.conf(5) can hold: dot-separated labels of 1 to 63 letters, digits,
    hyphens (not first or last) and underscores, at most 253 characters (RFC 1035 section 2.3.4;
    RFC 2181 section 11 allows the underscore of service names), an optional final dot."""
    name = name[:-1] if name.endswith(".") else name
    if re.fullmatch(r"[0-9.]+", name):
        return False      # '10.0.0.300' is a mistyped address, not a domain (RFC 3696 section 2)
    return 0 < len(name) <= 253 and all(
        re.fullmatch(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?", label) for label in name.split("."))


def _table(value: str) -> str:
    """wg-quick's ``Table``: off, auto, main or a routing table number (see ip-route(8), "table")."""
    v = value.lower()
    if v in ("off", "auto", "main"):
        return v
    if v.isdigit() and 0 < int(v) < 1 << 32:
        n = int(v)
        if n in _RESERVED_TABLES:
            raise ValueError(f"table {n} is the kernel's '{_RESERVED_TABLES[n]}' table")
        return str(n)
    raise ValueError(f"{_q(value)} is not off, auto, main or a table number")


def _fwmark(value: str) -> int | None:
    """wg's ``FwMark``: a 32-bit mark, decimal or 0x-hex; 0 or ``off`` means none (wg(8))."""
    v = value.lower()
    if v == "off":
        return None
    try:
        n = int(v, 16) if v.startswith("0x") else int(v, 10)
    except ValueError:
        n = -1
    if not 0 <= n < 1 << 32:
        raise ValueError(f"{_q(value)} is not a 32-bit mark")
    return n or None


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    # A host is an IPv4 address or a DNS name (letters, digits, '-', '_', '.'): anything else,
    # e.g. a key pasted here by mistake ('+', '/', '='), is refused before a resolver sees it.
    m = (re.fullmatch(r"\[([0-9A-Fa-f:.%]+)\]:(\d+)", value)
         or re.fullmatch(r"([A-Za-z0-9_.-]+):(\d+)", value))
    if not m:
        raise ValueError(f"{_q(value)} is not host:port")
    return m.group(1), _port(m.group(2))


def _set_peer(peer: PeerConfig, key: str, value: str) -> None:
    if key == "PublicKey":
        peer.public_key = _keys.decode(value, "public key")
    elif key == "PresharedKey":
        peer.preshared_key = _keys.decode(value, "preshared key")
    elif key == "AllowedIPs":
        for a in _list(value):
            try:
                peer.allowed_ips.append(ipaddress.ip_network(a, strict=False))
            except ValueError:
                raise ValueError(f"{_q(a)} is not an IP prefix") from None
    elif key == "Endpoint":
        peer.endpoint = parse_endpoint(value)
    elif key == "PersistentKeepalive":
        if value.lower() == "off":
            peer.persistent_keepalive = 0
        elif value.isdigit() and 0 <= int(value) < 65536:
            peer.persistent_keepalive = int(value)
        else:
            raise ValueError(f"{_q(value)} is not a number of seconds")


def format_endpoint(ep: tuple[str, int]) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def dumps(cfg: Config) -> str:
    """Write a config as wg-quick INI text (vpnedu-only keys only when not default)."""
    itf = cfg.interface
    lines = ["[Interface]"]
    if itf.public_endpoint:
        lines.append(f"# PublicEndpoint = {format_endpoint(itf.public_endpoint)}")
    if itf.private_key:
        lines.append(f"PrivateKey = {_keys.encode(itf.private_key)}")
    if itf.addresses:
        lines.append("Address = " + ", ".join(str(a) for a in itf.addresses))
    if itf.listen_port:
        lines.append(f"ListenPort = {itf.listen_port}")
    if itf.mtu:
        lines.append(f"MTU = {itf.mtu}")
    if itf.dns:
        lines.append("DNS = " + ", ".join(itf.dns))
    if itf.table:
        lines.append(f"Table = {itf.table}")
    if itf.fwmark:
        lines.append(f"FwMark = {itf.fwmark:#x}")
    for kind in HOOKS:
        for cmd in itf.hooks.get(kind, []):
            lines.append(f"{kind} = {cmd}")
    if itf.cipher_suite != "wireguard":
        lines.append(f"CipherSuite = {itf.cipher_suite}")
    if itf.allow_null_teaching and itf.cipher_suite == "null-teaching":
        # Only the null-teaching suite asks for it: beside another suite it would change nothing
        # and only make the file one that WireGuard's apps refuse.
        lines.append("AllowNullTeaching = true")
    if itf.forwarding:
        lines.append(f"Forwarding = {itf.forwarding}")
    if itf.kill_switch in ("on", "lan"):    # off is wg-quick's default: not written
        lines.append(f"KillSwitch = {'true' if itf.kill_switch == 'on' else 'lan'}")
    if itf.block_ipv6 in ("on", "off"):     # auto is the default: not written
        lines.append(f"BlockIPv6 = {'true' if itf.block_ipv6 == 'on' else 'false'}")
    if not itf.clamp_mss:
        lines.append("ClampMSS = false")
    if itf.socks_port is not None and itf.socks_port != DEFAULT_SOCKS_PORT:
        lines.append(f"SocksPort = {itf.socks_port or 'off'}")
    if itf.http_proxy_port is not None and itf.http_proxy_port != DEFAULT_HTTP_PROXY_PORT:
        lines.append(f"HTTPProxyPort = {itf.http_proxy_port or 'off'}")
    for name, password in itf.proxy_users:
        lines.append(f"ProxyUser = {name}:{password}")
    if not itf.dns_forwarder:
        lines.append("DNSForwarder = false")
    for p in cfg.peers:
        lines.append("")
        lines.append("[Peer]")
        if p.name:
            lines.append(f"# Name = {p.name}")
        lines.append(f"PublicKey = {_keys.encode(p.public_key)}")
        if p.preshared_key:
            lines.append(f"PresharedKey = {_keys.encode(p.preshared_key)}")
        if p.allowed_ips:
            lines.append("AllowedIPs = " + ", ".join(str(n) for n in p.allowed_ips))
        if p.endpoint:
            lines.append(f"Endpoint = {format_endpoint(p.endpoint)}")
        if p.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(lines) + "\n"


def save(cfg: Config, path: str | os.PathLike) -> None:
    """Write a config file readable by its owner only (it holds a private key).

    The text goes to a temporary file beside it, created 0600, which then replaces the old file in
    one rename: a full disk or a crash half-way leaves the old config whole, never half a file.
    A missing folder is created."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dumps(cfg))
            os.chmod(tmp, 0o600)
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
    except OSError as e:
        why = f"{p.parent} is not a folder" if p.parent.exists() and not p.parent.is_dir() else e.strerror
        raise VpneduError(f"cannot write {p}: {why}",
                          f"check that the folder {p.parent} exists and is writable, or choose another path") from None


def dumps_wg(cfg: Config) -> str:
    """The part of a config that `wg setconf` reads (like `wg-quick strip`): PrivateKey,
    ListenPort and FwMark of the interface, and the peers."""
    itf = cfg.interface
    lines = ["[Interface]"]
    if itf.private_key:
        lines.append(f"PrivateKey = {_keys.encode(itf.private_key)}")
    if itf.listen_port:
        lines.append(f"ListenPort = {itf.listen_port}")
    if itf.fwmark:
        lines.append(f"FwMark = {itf.fwmark:#x}")
    text = "\n".join(lines) + "\n"
    peers = dumps(Config(InterfaceConfig(), cfg.peers))
    return text + peers[len("[Interface]\n"):]
