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
``# Name = ...`` (Peer)            a comment line, so wg ignores it; vpnedu names the peer
``# PublicEndpoint = ...`` (Interface)  a server's note of where clients reach it (for add-client)

The vpnedu keys are only written when they differ from the defaults, so a file
for the ``wireguard`` suite stays a pure wg-quick file.

Every error names the file, the line, what is wrong and how to fix it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, KeyFormatError, SuiteError, VpneduError
from .protocol import keys as _keys
from .protocol.suites import SUITES, get_suite

DEFAULT_PORT = 51820

_INTERFACE_KEYS = {
    "privatekey": "PrivateKey", "listenport": "ListenPort", "fwmark": "FwMark",
    "address": "Address", "dns": "DNS", "mtu": "MTU", "table": "Table",
    "preup": "PreUp", "postup": "PostUp", "predown": "PreDown", "postdown": "PostDown",
    "saveconfig": "SaveConfig", "ciphersuite": "CipherSuite", "allownullteaching": "AllowNullTeaching",
    "forwarding": "Forwarding",
}
_PEER_KEYS = {
    "publickey": "PublicKey", "presharedkey": "PresharedKey", "allowedips": "AllowedIPs",
    "endpoint": "Endpoint", "persistentkeepalive": "PersistentKeepalive",
}
#: wg-quick keys that vpnedu reads and keeps but does not act on (written back unchanged).
_PASSTHROUGH = ("Table", "FwMark", "PreUp", "PostUp", "PreDown", "PostDown", "SaveConfig")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


@dataclass
class PeerConfig:
    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: list[Network] = field(default_factory=list)
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int = 0
    name: str | None = None


@dataclass
class InterfaceConfig:
    private_key: bytes | None = None
    addresses: list[Interface] = field(default_factory=list)
    listen_port: int | None = None
    mtu: int | None = None
    dns: list[str] = field(default_factory=list)
    cipher_suite: str = "wireguard"
    allow_null_teaching: bool = False
    #: A server's forwarding mode for clients' traffic to the outside (None: not set, i.e. nat).
    forwarding: str | None = None
    #: Where clients reach this server (a server's own note, written as a comment line).
    public_endpoint: tuple[str, int] | None = None
    #: wg-quick keys vpnedu does not act on, kept so that a round trip loses nothing.
    extra: list[tuple[str, str]] = field(default_factory=list)

    @property
    def public_key(self) -> bytes | None:
        return _keys.public_key(self.private_key) if self.private_key else None


@dataclass
class Config:
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: list[PeerConfig] = field(default_factory=list)
    source: str = "<config>"

    def suite(self):
        """The chosen :class:`~vpnedu.protocol.suites.CipherSuite` (refusing null-teaching unless allowed)."""
        try:
            return get_suite(self.interface.cipher_suite, allow_insecure=self.interface.allow_null_teaching)
        except SuiteError as e:
            raise ConfigError(f"{self.source}: {e.problem}", e.fix) from None


def load(path: str | os.PathLike) -> Config:
    """Read a config file, with a clear error if it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file", "check the path, or create one with "
                          "'vpnedu server init' / 'vpnedu server add-client NAME'") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied", "run as the file's owner or as root") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory", "give the path of a .conf file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file", "a config is an INI text file in wg-quick format") from None
    cfg = loads(text, source=str(p))
    if cfg.interface.private_key is not None:
        check_private(p)
    return cfg


def check_private(path: Path) -> None:
    """Refuse a file holding a private key that other users can read: whoever reads the key can
    impersonate this host to every peer (wg-quick only warns; vpnedu refuses)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & 0o004:
        raise ConfigError(f"{path} holds a private key but every user on this machine can read it "
                          f"(mode {mode & 0o777:04o})", f"run: chmod 600 {path}")


def loads(text: str, source: str = "<config>") -> Config:
    """Parse wg-quick INI text."""
    cfg = Config(source=source)
    section: str | None = None
    peer: PeerConfig | None = None
    peer_line = 0
    seen_interface = False
    pending_name: str | None = None

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
            name = line.strip("[]").strip().lower()
            if not line.endswith("]") or name not in ("interface", "peer"):
                raise err(lineno, f"unknown section {line!r}", "use [Interface] or [Peer]")
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
            raise err(lineno, f"expected 'Key = Value', got {line!r}", "write settings as 'Key = Value'")
        key, value = (x.strip() for x in line.split("=", 1))
        # base64 keys end in '=': split only at the first '=' and keep the rest.
        if section is None:
            raise err(lineno, f"{key} outside any section", "put it under [Interface] or [Peer]")
        known = _INTERFACE_KEYS if section == "interface" else _PEER_KEYS
        canon = known.get(key.lower())
        if canon is None:
            where = "[Interface]" if section == "interface" else "[Peer]"
            raise err(lineno, f"unknown key {key!r} in {where}",
                      "check the spelling; known keys: " + ", ".join(known.values()))
        try:
            if section == "interface":
                _set_interface(cfg.interface, canon, value)
            else:
                _set_peer(peer, canon, value)
        except (ValueError, KeyFormatError) as e:
            problem = e.problem if isinstance(e, KeyFormatError) else str(e)
            fix = e.fix if isinstance(e, KeyFormatError) else _FIXES.get(canon, "see 'man wg-quick'")
            raise err(lineno, f"{canon}: {problem}", fix) from None
    finish_peer()
    if not seen_interface:
        raise ConfigError(f"{source}: no [Interface] section", "start the file with [Interface] and a PrivateKey")
    keys_seen: set[bytes] = set()
    for p in cfg.peers:
        if p.public_key in keys_seen:
            raise ConfigError(f"{source}: two [Peer] sections with PublicKey {_keys.encode(p.public_key)}",
                              "each peer appears once; merge their AllowedIPs")
        keys_seen.add(p.public_key)
    return cfg


_FIXES = {
    "Address": "write addresses with a prefix length, e.g. 'Address = 10.0.0.2/24'",
    "ListenPort": "use a UDP port number from 1 to 65535, e.g. 51820",
    "MTU": "use a number from 576 to 65535, e.g. 1420",
    "AllowedIPs": "write prefixes separated by commas, e.g. 'AllowedIPs = 10.0.0.0/24, 0.0.0.0/0'",
    "Endpoint": "write host:port, e.g. 'Endpoint = 203.0.113.1:51820' or '[2001:db8::1]:51820'",
    "PersistentKeepalive": "use seconds from 1 to 65535, or 'off'",
    "CipherSuite": "choose one of: " + ", ".join(SUITES),
    "AllowNullTeaching": "use true or false",
    "Forwarding": "choose one of: nat, proxy, none",
}


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{value!r} is not a port number")
    return int(value)


def _bool(value: str) -> bool:
    v = value.lower()
    if v in ("true", "yes", "on", "1"):
        return True
    if v in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{value!r} is not true or false")


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
                raise ValueError(f"{a!r} is not an IP address with prefix") from None
    elif key == "ListenPort":
        itf.listen_port = _port(value)
    elif key == "MTU":
        if not value.isdigit() or not 576 <= int(value) <= 65535:
            raise ValueError(f"{value!r} is not a valid MTU")
        itf.mtu = int(value)
    elif key == "DNS":
        itf.dns.extend(_list(value))
    elif key == "CipherSuite":
        if value.lower() not in SUITES:
            raise ValueError(f"unknown cipher suite {value!r}")
        itf.cipher_suite = value.lower()
    elif key == "AllowNullTeaching":
        itf.allow_null_teaching = _bool(value)
    elif key == "Forwarding":
        if value.lower() not in ("nat", "proxy", "none"):
            raise ValueError(f"unknown forwarding mode {value!r}")
        itf.forwarding = value.lower()
    else:
        itf.extra.append((key, value))


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%]+)\]:(\d+)", value) or re.fullmatch(r"([^:\[\]\s]+):(\d+)", value)
    if not m:
        raise ValueError(f"{value!r} is not host:port")
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
                raise ValueError(f"{a!r} is not an IP prefix") from None
    elif key == "Endpoint":
        peer.endpoint = parse_endpoint(value)
    elif key == "PersistentKeepalive":
        if value.lower() == "off":
            peer.persistent_keepalive = 0
        elif value.isdigit() and 0 <= int(value) < 65536:
            peer.persistent_keepalive = int(value)
        else:
            raise ValueError(f"{value!r} is not a number of seconds")


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
    for k, v in itf.extra:
        lines.append(f"{k} = {v}")
    if itf.cipher_suite != "wireguard":
        lines.append(f"CipherSuite = {itf.cipher_suite}")
    if itf.allow_null_teaching:
        lines.append("AllowNullTeaching = true")
    if itf.forwarding:
        lines.append(f"Forwarding = {itf.forwarding}")
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


#: The keys `wg setconf` understands; everything else in a wg-quick file is for wg-quick itself.
_WG_INTERFACE_KEYS = ("PrivateKey", "ListenPort", "FwMark")


def dumps_wg(cfg: Config) -> str:
    """The part of a config that `wg setconf` reads (like `wg-quick strip`)."""
    itf = cfg.interface
    lines = ["[Interface]"]
    if itf.private_key:
        lines.append(f"PrivateKey = {_keys.encode(itf.private_key)}")
    if itf.listen_port:
        lines.append(f"ListenPort = {itf.listen_port}")
    for k, v in itf.extra:
        if k in _WG_INTERFACE_KEYS:
            lines.append(f"{k} = {v}")
    text = "\n".join(lines) + "\n"
    peers = dumps(Config(InterfaceConfig(), cfg.peers))
    return text + peers[len("[Interface]\n"):]
