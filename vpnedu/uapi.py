"""WireGuard's cross-platform configuration protocol, as text: what ``wg`` says to a userspace
interface, and what it hears back.

The kernel module is configured over netlink; every *userspace* implementation (wireguard-go,
boringtun, ``vpnedu-wg``) is configured through a Unix socket, ``/var/run/wireguard/IFNAME.sock``,
in a line protocol the WireGuard project documents at
<https://www.wireguard.com/xplatform/#configuration-protocol>.  The unmodified ``wg`` tool
speaks it: ``wg show``, ``wg set``, ``wg setconf``, ``wg syncconf`` all turn into one of two
operations.  Keys travel as 64 hex digits (not base64), every line is ``key=value``, and an
empty line ends a message::

    get=1                               private_key=e84b5a6d...   (only if set)
    <empty line>               ->       listen_port=51820          (only if bound)
                                        fwmark=51820               (only if not 0)
                                        public_key=b85996fe...     (then per peer:)
                                        preshared_key=0000...      protocol_version=1
                                        endpoint=[abcd::1]:51820   last_handshake_time_sec=...
                                        tx_bytes=... rx_bytes=...  persistent_keepalive_interval=0
                                        allowed_ip=10.0.0.2/32     (one line per prefix)
                                        errno=0
                                        <empty line>

    set=1                               errno=0
    private_key=...            ->       <empty line>
    listen_port=51820
    replace_peers=true                  (or errno=-22 when a line is wrong: nothing changed)
    public_key=...
    endpoint=192.0.2.1:51820
    replace_allowed_ips=true
    allowed_ip=10.0.0.0/24
    <empty line>

In ``set``, lines before the first ``public_key`` are about the interface; each
``public_key`` starts a peer section (the peer is created unless ``update_only=true``).
``remove=true`` deletes the peer, ``replace_peers=true`` / ``replace_allowed_ips=true`` start
from empty, ``allowed_ip=-PREFIX`` removes one prefix, and a key of 64 zeros clears a private or
pre-shared key.

**Errors** are ``errno=-N`` with a Linux errno, as wireguard-go writes them (negative; ``wg``
prints ``strerror(N)``): a line without ``=`` is ``-EPROTO`` (71), a bad value or an unknown
key ``-EINVAL`` (22), a listen port in use ``-EADDRINUSE`` (98).

**Atomic.**  wireguard-go applies each line as it reads it, so a message that fails half way
leaves half a change behind.  Here a ``set`` is parsed *and checked* completely first
(:class:`SetParser`), into a list of operations that cannot fail; only then does
:func:`apply_set` carry them out, in order, with exactly wireguard-go's meaning.  The one step
that can fail for a reason outside the text -- binding a new listen port -- the caller does
before :func:`apply_set` (see :func:`socket_settings`), and a failure there also changes nothing.

No message, error or ``repr`` ever contains a private or pre-shared key: errors name the line
and the key, never a key's value.

This module is pure (no sockets, no clock): the daemons' socket server,
:mod:`vpnedu.node.uapi_socket`, feeds it lines and writes what it returns.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .protocol.allowedips import BITS, Prefix, format_prefix
from .protocol.cookie import format_endpoint
from .protocol.device import Device
from .protocol.handshake import NO_PSK
from .protocol.keys import KEY_SIZE
from .protocol.peer import Peer

# Linux errno numbers, as the replies carry them (negated).
EIO = 5
EINVAL = 22
EPROTO = 71
EADDRINUSE = 98
ENOANO = 55
ERRNO_NAMES = {EIO: "EIO", EINVAL: "EINVAL", EPROTO: "EPROTO", EADDRINUSE: "EADDRINUSE", ENOANO: "ENOANO"}
#: A longer line cannot be valid (the longest is an IPv6 endpoint with a zone); refusing it keeps
#: a hostile client from making the daemon buffer without end.
MAX_LINE = 4096
ZERO_KEY = bytes(KEY_SIZE)
#: The keys whose values are secret: never echoed in an error.
SECRET_KEYS = ("private_key", "preshared_key")

DEVICE_KEYS = ("private_key", "listen_port", "fwmark", "replace_peers")
PEER_KEYS = ("update_only", "remove", "preshared_key", "endpoint", "persistent_keepalive_interval",
             "replace_allowed_ips", "allowed_ip", "protocol_version")


class UapiError(Exception):
    """A ``set`` or ``get`` that fails: the errno of the reply and a message for the log
    (which never holds a key)."""

    def __init__(self, errno: int, message: str):
        self.errno = errno
        self.message = message
        super().__init__(f"{ERRNO_NAMES.get(errno, errno)}: {message}")

    def reply(self) -> str:
        """The status lines that end the reply: ``errno=-22`` and an empty line."""
        return f"errno=-{self.errno}\n\n"


OK_REPLY = "errno=0\n\n"


# ---------------------------------------------------------------------- values
def parse_hex_key(value: str, key: str, line: int) -> bytes:
    """64 hex digits -> 32 bytes (upper or lower case, as wireguard-go accepts)."""
    if len(value) != 2 * KEY_SIZE:
        raise UapiError(EINVAL, f"line {line}: {key} is {len(value)} characters, not 64 hex digits "
                                "(not shown: keys are secret)")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UapiError(EINVAL, f"line {line}: {key} is not 64 hex digits (not shown: keys are secret)") from None


def _uint(value: str, key: str, line: int, limit: int) -> int:
    if not value.isdigit() or not value.isascii() or int(value) > limit:
        raise UapiError(EINVAL, f"line {line}: {key}={_quote(value)} is not a number from 0 to {limit}")
    return int(value)


def _quote(value: str, limit: int = 60) -> str:
    from .protocol.keys import shown
    return shown(value, limit)


def parse_prefix(text: str, line: int = 0) -> Prefix:
    """``ADDRESS/LENGTH`` -> a :data:`~vpnedu.protocol.allowedips.Prefix` (host bits dropped, as
    the table stores it).  Strict like Go's ``netip.ParsePrefix``: the length is required, in
    decimal, within the family's bits; no zone."""
    addr, slash, length = text.partition("/")
    if not slash or not length.isdigit() or not length.isascii() or len(length) > 3 or "%" in addr:
        raise UapiError(EINVAL, f"line {line}: allowed_ip={_quote(text)} is not ADDRESS/LENGTH")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise UapiError(EINVAL, f"line {line}: allowed_ip={_quote(text)}: not an IPv4 or IPv6 address") from None
    n = int(length)
    bits = BITS[ip.version]
    if n > bits:
        raise UapiError(EINVAL, f"line {line}: allowed_ip={_quote(text)}: an IPv{ip.version} prefix is at "
                                f"most /{bits}")
    return ip.version, n, int(ip) >> (bits - n)


def parse_endpoint(text: str, line: int = 0) -> tuple[str, int]:
    """``192.0.2.1:51820`` or ``[2001:db8::1]:51820`` (a zone allowed: ``[fe80::1%eth0]:51820``)
    -> ``(host, port)``.  Only numeric addresses: ``wg`` resolves names before it sends them."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]")
        if not bracket or not port.startswith(":"):
            raise UapiError(EINVAL, f"line {line}: endpoint={_quote(text)} is not [IPv6]:PORT")
        port = port[1:]
        addr, pct, zone = host.partition("%")
        try:
            ip = ipaddress.IPv6Address(addr)
        except ValueError:
            raise UapiError(EINVAL, f"line {line}: endpoint={_quote(text)}: not an IPv6 address") from None
        if pct and not zone:
            raise UapiError(EINVAL, f"line {line}: endpoint={_quote(text)}: empty zone after %")
        host = str(ip) + (f"%{zone}" if pct else "")
    else:
        host, colon, port = text.rpartition(":")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise UapiError(EINVAL, f"line {line}: endpoint={_quote(text)} is not IPv4:PORT or "
                                    "[IPv6]:PORT") from None
        host = str(ip)
    if not port.isdigit() or not port.isascii() or int(port) > 65535:
        raise UapiError(EINVAL, f"line {line}: endpoint={_quote(text)}: the port is not 0-65535")
    return host, int(port)


# ---------------------------------------------------------------------- set: parsing
class SetParser:
    """Reads the lines of one ``set=1`` message (after the ``set=1`` line) and turns them into
    :attr:`ops`, a list of checked operations, or remembers the first error.

    Feed it every line without its newline (:meth:`feed` returns True at the empty line that
    ends the message).  After an error it keeps reading to the end of the message -- the
    client wrote all of it before it reads the reply -- but stores nothing more.

    Operations are tuples, in the order of the message: ``("private_key", bytes | None)``,
    ``("listen_port", int)``, ``("fwmark", int)``, ``("replace_peers",)``, ``("peer", key)``,
    ``("remove",)``, ``("update_only",)``, ``("preshared_key", bytes | None)``,
    ``("endpoint", (host, port))``, ``("persistent_keepalive_interval", int)``,
    ``("replace_allowed_ips",)``, ``("allowed_ip", add: bool, prefix)``.  A key of 64 zeros is
    None (cleared).  ``protocol_version=1`` is checked and dropped.
    """

    __slots__ = ("ops", "error", "line", "_in_peer", "done")

    def __init__(self) -> None:
        self.ops: list[tuple] = []
        self.error: UapiError | None = None
        self.line = 1          # the set=1 line was line 1
        self._in_peer = False
        self.done = False

    def __repr__(self) -> str:   # never the ops: they hold keys
        return f"SetParser({len(self.ops)} operations, error={self.error!r}, done={self.done})"

    def feed(self, text: str) -> bool:
        """One line (no newline).  True once the message is complete."""
        self.line += 1
        if not text:
            self.done = True
            return True
        if self.error is not None:
            return False
        try:
            self._line(text)
        except UapiError as e:
            self.error = e
            self.ops = []
        return False

    def fail(self, error: UapiError) -> None:
        """Record an error found outside the text (a line too long, bytes that are not text)."""
        if self.error is None:
            self.error = error
            self.ops = []

    def _line(self, text: str) -> None:
        key, eq, value = text.partition("=")
        n = self.line
        if not eq:
            raise UapiError(EPROTO, f"line {n}: {_quote(text)} is not key=value")
        ops = self.ops
        if key == "public_key":
            self._in_peer = True
            ops.append(("peer", parse_hex_key(value, key, n)))
            return
        if not self._in_peer:
            if key == "private_key":
                k = parse_hex_key(value, key, n)
                ops.append(("private_key", None if k == ZERO_KEY else k))
            elif key == "listen_port":
                ops.append(("listen_port", _uint(value, key, n, 0xFFFF)))
            elif key == "fwmark":
                ops.append(("fwmark", _uint(value, key, n, 0xFFFFFFFF)))
            elif key == "replace_peers":
                _true(value, key, n)
                ops.append(("replace_peers",))
            else:
                raise UapiError(EINVAL, f"line {n}: {_quote(key)} is not an interface key (before the first "
                                        f"public_key: {', '.join(DEVICE_KEYS)})")
            return
        if key == "allowed_ip":
            add = not value.startswith("-")
            ops.append(("allowed_ip", add, parse_prefix(value if add else value[1:], n)))
        elif key == "endpoint":
            ops.append(("endpoint", parse_endpoint(value, n)))
        elif key == "preshared_key":
            k = parse_hex_key(value, key, n)
            ops.append(("preshared_key", None if k == ZERO_KEY else k))
        elif key == "persistent_keepalive_interval":
            ops.append(("persistent_keepalive_interval", _uint(value, key, n, 0xFFFF)))
        elif key in ("replace_allowed_ips", "remove", "update_only"):
            _true(value, key, n)
            ops.append((key,))
        elif key == "protocol_version":
            if value != "1":
                raise UapiError(EINVAL, f"line {n}: protocol_version={_quote(value)}: only version 1 exists")
        else:
            raise UapiError(EINVAL, f"line {n}: {_quote(key)} is not a peer key (after public_key: "
                                    f"{', '.join(PEER_KEYS)})")


def _true(value: str, key: str, line: int) -> None:
    if value != "true":
        raise UapiError(EINVAL, f"line {line}: {key}={_quote(value)}: the only value is 'true'")


def parse_set(text: str) -> list[tuple]:
    """A whole ``set`` message body (the lines after ``set=1``, up to and including the empty
    line) -> operations; raises :class:`UapiError`.  For tests and the simulation; the socket
    server feeds a :class:`SetParser` line by line."""
    p = SetParser()
    for line in text.split("\n"):
        if p.feed(line):
            break
    if not p.done:
        p.fail(UapiError(EPROTO, "the message has no empty line at its end"))
    if p.error is not None:
        raise p.error
    return p.ops


def socket_settings(ops: list[tuple]) -> tuple[int | None, int | None]:
    """The listen port and fwmark a ``set`` asks for (the last of each; None if absent): the
    caller binds and marks its sockets *before* :func:`apply_set`, so that a port in use fails
    the whole message."""
    port = mark = None
    for op in ops:
        if op[0] == "listen_port":
            port = op[1]
        elif op[0] == "fwmark":
            mark = op[1]
    return port, mark


# ---------------------------------------------------------------------- set: applying
@dataclass
class Applied:
    """What :func:`apply_set` did (for the event log and the caller)."""

    #: Peers that must send a keepalive now: their persistent keepalive was just turned on.
    keepalive: list[Peer] = field(default_factory=list)
    #: Peers this message named that still exist (the caller flushes their queued packets).
    touched: list[Peer] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    updated: int = 0
    private_key: bool = False
    allowed_ips_added: int = 0
    allowed_ips_removed: int = 0

    def summary(self) -> dict:
        return {"peers_added": self.added, "peers_removed": self.removed, "peers_updated": self.updated,
                "private_key_changed": self.private_key, "allowed_ips_added": self.allowed_ips_added,
                "allowed_ips_removed": self.allowed_ips_removed}


def apply_set(device: Device, ops: list[tuple], now: float) -> Applied:
    """Carry out checked operations on ``device``, in order, as wireguard-go's
    ``IpcSetOperation`` would (see the module doc); it cannot fail.

    A peer section whose key is the device's own public key is ignored, as is one with
    ``update_only`` for a peer that does not exist (it is not created).  ``listen_port`` and
    ``fwmark`` are the caller's (:func:`socket_settings`)."""
    done = Applied()
    routes = device.routes
    peer: Peer | None = None       # the peer of the current section (None: a dummy, ignored)
    created = False
    touched: dict[bytes, Peer] = {}
    for op in ops:
        kind = op[0]
        if kind == "allowed_ip":
            if peer is not None:
                if op[1]:
                    routes.insert_prefix(op[2], peer)
                    done.allowed_ips_added += 1
                elif routes.remove_prefix(op[2], peer):
                    done.allowed_ips_removed += 1
        elif kind == "peer":
            key = op[1]
            if key == device.public_key:
                peer, created = None, False
                continue
            peer = device.peers.get(key)
            created = peer is None
            if created:
                peer = device.add_peer(key)
                done.added += 1
            else:
                done.updated += 1
            touched[key] = peer
        elif kind == "private_key":
            done.private_key |= device.set_private_key(op[1])
            touched.pop(device.public_key, None)
        elif kind == "replace_peers":
            for key in list(device.peers):
                device.remove_peer(key)
                done.removed += 1
            touched.clear()
        elif peer is None:
            continue
        elif kind == "endpoint":
            peer.endpoint = op[1]
        elif kind == "preshared_key":
            peer.psk = op[1] or NO_PSK
        elif kind == "persistent_keepalive_interval":
            if device.set_persistent_keepalive(peer, op[1], now):
                done.keepalive.append(peer)
        elif kind == "replace_allowed_ips":
            done.allowed_ips_removed += routes.count(peer)
            routes.remove_value(peer)
        elif kind == "update_only" and not created:
            continue      # the peer exists: the section goes on updating it
        elif kind in ("remove", "update_only"):
            # remove=true; or update_only=true for a peer this very section created: undo it.
            device.remove_peer(peer.public_key)
            touched.pop(peer.public_key, None)
            if created:
                done.added -= 1
            else:
                done.removed += 1
                done.updated -= 1
            peer = None
    done.touched = [p for p in touched.values() if device.peers.get(p.public_key) is p]
    done.keepalive = [p for p in done.keepalive if device.peers.get(p.public_key) is p]
    return done


# ---------------------------------------------------------------------- get
class GetCache:
    """What :func:`get_pieces` made of each peer's allowed IPs, kept while they do not change
    (:meth:`~vpnedu.protocol.allowedips.AllowedIPs.revision`): the conformance script's peer
    with 130,560 prefixes is formatted once, not at every ``wg show``, and every reply shares
    the same bytes."""

    def __init__(self) -> None:
        self._blocks: dict = {}

    def block(self, device: Device, peer: Peer) -> bytes:
        routes = device.routes
        rev = routes.revision(peer)
        hit = self._blocks.get(peer)
        if hit is not None and hit[0] == rev:
            return hit[1]
        text = "".join([f"allowed_ip={format_prefix(p)}\n" for p in routes.prefixes(peer)]).encode()
        self._blocks[peer] = (rev, text)
        return text

    def keep_only(self, peers) -> None:
        live = set(peers)
        for p in [p for p in self._blocks if p not in live]:
            del self._blocks[p]


def get_pieces(device: Device, *, listen_port: int = 0, fwmark: int = 0,
               cache: GetCache | None = None) -> list[bytes]:
    """The reply to ``get=1`` as a list of byte strings to send one after the other: the
    interface, every peer, then ``errno=0`` and an empty line.  A snapshot: later changes do not
    show in it.

    As wireguard-go: ``private_key`` only if there is one, ``listen_port`` only if bound,
    ``fwmark`` only if not 0; per peer ``preshared_key`` is 64 zeros when there is none and
    ``last_handshake_time_*`` are 0 before the first handshake."""
    cache = cache if cache is not None else GetCache()
    out: list[bytes] = []
    head: list[str] = []
    w = head.append
    if device.static is not None:
        w(f"private_key={device.static.private.hex()}\n")
    if listen_port:
        w(f"listen_port={listen_port}\n")
    if fwmark:
        w(f"fwmark={fwmark}\n")
    for peer in device.peers.values():
        w(f"public_key={peer.public_key.hex()}\npreshared_key={peer.psk.hex()}\nprotocol_version=1\n")
        if peer.endpoint is not None:
            w(f"endpoint={format_endpoint(peer.endpoint)}\n")
        t = peer.last_handshake
        sec = int(t) if t else 0
        nsec = int(round((t - sec) * 1e9)) if t else 0
        if nsec >= 1_000_000_000:
            sec, nsec = sec + 1, nsec - 1_000_000_000
        w(f"last_handshake_time_sec={sec}\nlast_handshake_time_nsec={nsec}\n"
          f"tx_bytes={peer.tx_bytes}\nrx_bytes={peer.rx_bytes}\n"
          f"persistent_keepalive_interval={peer.persistent_keepalive}\n")
        block = cache.block(device, peer)
        if block:
            out.append("".join(head).encode())
            head.clear()
            out.append(block)
    w(OK_REPLY)
    out.append("".join(head).encode())
    cache.keep_only(device.peers.values())
    return out


def format_get(device: Device, *, listen_port: int = 0, fwmark: int = 0, cache: GetCache | None = None) -> str:
    """The whole reply to ``get=1`` as text (see :func:`get_pieces`)."""
    return b"".join(get_pieces(device, listen_port=listen_port, fwmark=fwmark, cache=cache)).decode()


def parse_get(text: str) -> dict:
    """A ``get`` reply -> ``{"interface": {...}, "peers": [{...}], "errno": N}`` (keys as in the
    protocol; peers' ``allowed_ip`` as a list).  For tests and the course, which show the raw
    text next to ``wg show``; raises :class:`UapiError` (EPROTO) on a malformed reply."""
    iface: dict = {}
    peers: list[dict] = []
    errno = None
    for n, line in enumerate(text.split("\n"), 1):
        if not line:
            break
        key, eq, value = line.partition("=")
        if not eq:
            raise UapiError(EPROTO, f"line {n} of the reply is not key=value")
        if key == "errno":
            errno = int(value)
        elif key == "public_key":
            peers.append({"public_key": value, "allowed_ip": []})
        elif peers:
            if key == "allowed_ip":
                peers[-1]["allowed_ip"].append(value)
            else:
                peers[-1][key] = value
        else:
            iface[key] = value
    if errno is None:
        raise UapiError(EPROTO, "the reply has no errno line")
    return {"interface": iface, "peers": peers, "errno": errno}


# ---------------------------------------------------------------------- one message, whole
def transact(host, message: str) -> tuple[str, UapiError | None]:
    """One whole message (``get=1`` or ``set=1`` ... up to its empty line) -> the reply text, and
    the error behind an ``errno=-N`` reply (None on success).

    The same steps as the socket server (:class:`vpnedu.node.uapi_socket.UapiServer`) takes for a
    message it read, for a host that has no socket: the simulated daemons (``vpnedu.sim.node``),
    which are configured by handing them the text.  ``host`` is what the socket server serves:
    ``device``, ``clock()``, ``uapi_socket_state()``, ``uapi_rebind(port, fwmark)`` and
    ``uapi_applied(applied)``.  A ``set`` is checked whole before anything changes (see the
    module doc): a failing message changes nothing and emits no event."""
    op, nl, body = message.partition("\n")
    if op == "get=1":
        if body not in ("\n", "\n\n", ""):
            err = UapiError(EINVAL, "get=1 must be followed by an empty line")
            return err.reply(), err
        port, mark = host.uapi_socket_state()
        return format_get(host.device, listen_port=port, fwmark=mark), None
    if op != "set=1":
        err = UapiError(EPROTO, f"{_quote(op)} is not an operation (get=1 or set=1)")
        return err.reply(), err
    try:
        commit_set(host, parse_set(body))
    except UapiError as e:
        return e.reply(), e
    return OK_REPLY, None


def commit_set(host, ops: list[tuple]) -> Applied:
    """Carry out a checked ``set`` on ``host`` (see :func:`transact`), as the socket server and
    :func:`transact` both do: the sockets first (a port that cannot be bound refuses the whole
    message, with nothing changed), then the Device, then the host is told what changed."""
    port, mark = socket_settings(ops)
    if port is not None or mark is not None:
        host.uapi_rebind(port, mark)
    applied = apply_set(host.device, ops, host.clock())
    host.uapi_applied(applied)
    return applied


# ---------------------------------------------------------------------- what wg(8) sends
#: ``wg set`` arguments this translation knows (the tool's own words), and the protocol key each
#: becomes.  ``private-key`` / ``preshared-key`` take a *file* in wg; they are left out here, so
#: that a key never has to be typed into a notebook.
WG_SET_DEVICE_ARGS = {"listen-port": "listen_port", "fwmark": "fwmark"}
WG_SET_PEER_ARGS = {"endpoint": "endpoint", "persistent-keepalive": "persistent_keepalive_interval",
                    "allowed-ips": "allowed_ip", "remove": "remove"}


def wg_set_message(args: list[str] | tuple[str, ...]) -> str:
    """The ``set=1`` message that ``wg set IFNAME ARGS...`` sends, for the common arguments:
    ``listen-port N``, ``fwmark N|off``, and per ``peer BASE64KEY``: ``remove``,
    ``endpoint IP:PORT``, ``persistent-keepalive N|off``, ``allowed-ips A/N,B/M`` (which
    *replaces* the peer's list: ``replace_allowed_ips=true`` first, as wg does).

    It is what the course shows where there is no ``wg`` binary (the simulation): the tool's
    words on the left, the protocol's on the right -- keys turn from base64 into hex, ``off``
    into 0, one comma-separated list into one line per prefix.  Raises :class:`UapiError`
    (EINVAL) for an argument it does not know or a value wg would refuse."""
    try:
        return _wg_set_message(list(args))
    except UapiError as e:
        # The value checks above speak of message lines; here there are arguments, not lines.
        msg = e.message.removeprefix("line 0: ")
        raise UapiError(e.errno, msg if msg.startswith("wg set") else f"wg set: {msg}") from None


def _wg_set_message(args: list[str]) -> str:
    from .errors import KeyFormatError
    from .protocol.keys import decode
    out = ["set=1"]
    i, n, in_peer = 0, len(args), False

    def value(name: str) -> str:
        if i + 1 >= n:
            raise UapiError(EINVAL, f"wg set: '{name}' needs a value")
        return args[i + 1]

    while i < n:
        a = args[i]
        if a == "peer":
            try:
                key = decode(value(a), "the peer's public key")
            except KeyFormatError as e:
                raise UapiError(EINVAL, f"wg set: {e.problem}") from None
            out.append(f"public_key={key.hex()}")
            in_peer, i = True, i + 2
            continue
        if not in_peer and a in WG_SET_DEVICE_ARGS:
            v = value(a)
            v = "0" if a == "fwmark" and v == "off" else v
            _uint(v, WG_SET_DEVICE_ARGS[a], 0, 0xFFFF if a == "listen-port" else 0xFFFFFFFF)
            out.append(f"{WG_SET_DEVICE_ARGS[a]}={int(v)}")
            i += 2
        elif in_peer and a == "remove":
            out.append("remove=true")
            i += 1
        elif in_peer and a == "endpoint":
            host, port = parse_endpoint(value(a))
            out.append(f"endpoint={format_endpoint((host, port))}")
            i += 2
        elif in_peer and a == "persistent-keepalive":
            v = value(a)
            v = "0" if v == "off" else v
            out.append(f"persistent_keepalive_interval={_uint(v, 'persistent-keepalive', 0, 0xFFFF)}")
            i += 2
        elif in_peer and a == "allowed-ips":
            out.append("replace_allowed_ips=true")
            for p in (x.strip() for x in value(a).split(",") if x.strip()):
                parse_prefix(p)
                out.append(f"allowed_ip={p}")
            i += 2
        else:
            where = "after 'peer KEY'" if in_peer else "before the first 'peer KEY'"
            known = ", ".join(WG_SET_PEER_ARGS if in_peer else [*WG_SET_DEVICE_ARGS, "peer"])
            raise UapiError(EINVAL, f"wg set: {_quote(a)} is not an argument this translation knows "
                                    f"{where} ({known})")
    return "\n".join(out) + "\n\n"
