"""The protocol engine of one WireGuard interface, sans-IO.

A :class:`Device` is what a WireGuard interface knows: its own static key, its peers, and a
table from the 32-bit *indices* in received messages to the handshake or session they belong
to.  It never touches a socket, a TUN device or a clock: the IO layer around it
(:mod:`vpnedu.datapath`, the simulation) reads, writes and keeps time, and calls

* :meth:`Device.receive_batch` with the datagrams one wakeup read from UDP -> an
  :class:`~vpnedu.protocol.transport.Output`: IP packets to write to TUN, datagrams to send;
* :meth:`Device.send_packets` with the IP packets read from TUN (routed to their peers by
  destination), or :meth:`Device.send_batch` for one known peer -> datagrams to send;
* :meth:`Device.tick` when time passed -> datagrams to send (retries, keepalives);
  :meth:`Device.next_deadline` says when to call it next.

There is **one send path and one receive path**, shaped like wireguard-go's ``device/send.go``
and ``receive.go``: a batch is encrypted or decrypted in one loop into buffers the caller
owns (:mod:`vpnedu.protocol.transport`), and the bookkeeping -- counters, roaming, the timer
hooks of :mod:`vpnedu.protocol.timers` -- runs once per run of packets of one session.  The
one-packet calls that the notebooks and tests use (:meth:`receive`, :meth:`send_packet`,
:meth:`send`) are a batch of one through the same code.

Every method takes ``now`` (monotonic seconds) from the caller; wall-clock time (TAI64N
timestamps, "latest handshake") is ``now + wall_offset``, an offset the IO layer measures once,
as boringtun's ``TimeStamper`` does.  Randomness (ephemeral keys, indices, cookie secrets and
nonces, retry jitter) comes from the injected ``random(n)``.  Given the same inputs, ``now``
values and random bytes, a Device produces the same bytes: a test can pass a seeded source and
compare a handshake byte for byte.

Whatever the core throws away is reported as a ``packet.dropped`` event with a ``reason``, and
counted in :attr:`Device.counters` whether or not anyone listens.  Nothing a remote party sends
can raise an exception out of :meth:`receive_batch`.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from ..errors import MessageError, SuiteError
from ..packet import ip as _ip
from . import handshake as hs
from . import messages as msgs
from . import tai64n
from . import timers as tm
from .allowedips import AllowedIPs
from .cookie import (COOKIE_REFRESH_TIME, CookieChecker, Endpoint, MacKeys, add_macs, check_mac1, format_endpoint,
                     open_cookie)
from .events import EventBus
from .keys import X25519KeyPair, clamp
from .keys import encode as _encode
from .peer import NEVER, Peer
from .session import TransportSession
from .suites import SUITES, WIREGUARD, CipherSuite, TagMismatch, get_suite
from .timers import DEFAULT_TIMERS, UNDER_LOAD_BATCH, UNDER_LOAD_HOLD, Timers
from .transport import HEADER, MIN_SIZE, TYPE, Output, seal_batch

Datagram = tuple[bytes, Endpoint]
#: A datagram as read from UDP: ``(buffer, segment_size, source)``.  With UDP GRO one read holds
#: several datagrams of ``segment_size`` bytes (the last may be shorter); otherwise
#: ``segment_size == len(buffer)``.
Read = tuple[bytes, int, Endpoint]
#: Default inner MTU: 1500 minus 20 (IPv4) + 8 (UDP) + 32 (WireGuard header and tag) + 20 spare for IPv6.
DEFAULT_MTU = 1420
_TRANSPORT_NAME = "received." + msgs.TYPE_NAMES[msgs.TRANSPORT_DATA]


@dataclass(slots=True)
class Received:
    """What :meth:`Device.receive` produced for one datagram."""

    #: Datagrams to send in reply (handshake responses, cookie replies, keepalives, queued data).
    datagrams: list[Datagram] = field(default_factory=list)
    #: Decrypted IP packets to hand to the TUN device, with the peer they came from.
    packets: list[tuple[Peer, bytes]] = field(default_factory=list)


def _b64(key: bytes) -> str:
    return _encode(key)


class Device:
    """One side of WireGuard: a static key, peers, indices and the timer state machine."""

    def __init__(self, private_key: bytes | None, *, suite: str | CipherSuite = WIREGUARD,
                 allow_insecure: bool = False, events: EventBus | None = None,
                 random: Callable[[int], bytes] = secrets.token_bytes, wall_offset: float = 0.0,
                 jitter: Callable[[float], float] | None = None,
                 timers: Timers = DEFAULT_TIMERS, mtu: int = DEFAULT_MTU,
                 check_source: bool = True, name: str = "device"):
        if isinstance(suite, str):
            suite = get_suite(suite, allow_insecure=allow_insecure)
        elif suite.insecure and not allow_insecure:
            get_suite(suite.name, allow_insecure=False)  # raises the standard SuiteError
        self.suite = suite
        #: Our static key pair; None until a private key is set (a ``vpnedu-wg`` interface
        #: starts without one): then no handshake can be made or answered.
        self.static: X25519KeyPair | None = None
        #: The latest ``now`` a caller gave (events of the default bus are stamped with it).
        self.now = 0.0
        #: Unix time minus monotonic time: ``now + wall_offset`` is the wall clock (TAI64N).
        self.wall_offset = wall_offset
        self.events = events if events is not None else EventBus(clock=lambda: self.now + self.wall_offset)
        #: ``random(n)`` -> n random bytes: the only source of randomness of the protocol.
        self.random = random
        self.jitter = jitter or self._random_jitter
        self.timers = timers
        self.mtu = mtu
        #: Until when (monotonic) handshakes need a valid mac2 (see :meth:`under_load`).
        self.under_load_until = float("-inf")
        #: Enforce cryptokey routing on received packets (source must be in the peer's AllowedIPs).
        self.check_source = check_source
        self.name = name
        self.peers: dict[bytes, Peer] = {}
        #: Peers whose timers this Device may have moved since :meth:`next_deadline` last looked
        #: (see ``changed_only`` there); ``_timers_all``: look at every peer next time.
        self._timers_moved: set[Peer] = set()
        self._timers_all = True
        self.routes: AllowedIPs[Peer] = AllowedIPs()
        self._index: dict[int, tuple[Peer, object]] = {}
        self.cookie_checker: CookieChecker | None = None
        self.mac_keys: MacKeys | None = None
        self._other_suites: list = []
        self._set_static(private_key)
        #: Always-on counters: drops by reason, handshakes, messages by type.
        self.counters: Counter[str] = Counter()
        #: If set, called with Wireshark key-log lines for every handshake (``--keylog``).
        self.keylog: Callable[[str], None] | None = None

    @property
    def public_key(self) -> bytes | None:
        return self.static.public if self.static is not None else None

    def _set_static(self, private_key: bytes | None) -> None:
        self.static = X25519KeyPair(private_key) if private_key is not None else None
        if self.static is None:
            self.cookie_checker = self.mac_keys = None
            self._other_suites = []
            return
        self.cookie_checker = CookieChecker(self.suite, self.static.public, self.random)
        self.mac_keys = self.cookie_checker.keys
        # mac1 keys of the *other* suites, only to explain a suite mismatch in a drop event.
        self._other_suites = [(s, MacKeys(s, self.static.public)) for s in SUITES.values()
                              if s is not self.suite]

    def set_private_key(self, private_key: bytes | None) -> bool:
        """Change (or, with None, remove) the interface's static private key, as ``wg set
        private-key`` does.  Returns False if it is the key already in use (nothing happens).

        Every session and handshake in flight was made with the old key and ends here: the next
        packet to a peer starts a new handshake.  A peer whose public key *is* the new one is
        removed (a device is never its own peer), as wireguard-go does."""
        if private_key == (self.static.private if self.static is not None else None):
            return False
        self._set_static(private_key)
        own = self.public_key
        if own is not None and own in self.peers:
            self.remove_peer(own)
        for peer in self.peers.values():
            self._zero_keys(peer)
            peer.staged.clear()
            peer.last_initiation_sent = NEVER
            peer.t_retransmit = peer.t_keepalive = peer.t_new_handshake = peer.t_persistent = None
        self.under_load_until = float("-inf")
        return True

    def wall(self, now: float) -> float:
        """Unix time at monotonic ``now``."""
        return now + self.wall_offset

    def _random_jitter(self, limit: float) -> float:
        """Uniform in [0, limit), from the injected random bytes."""
        return int.from_bytes(self.random(4), "little") / 2**32 * limit

    def _ephemeral(self) -> X25519KeyPair:
        return X25519KeyPair(clamp(self.random(32)))

    # ------------------------------------------------------------------ peers
    def add_peer(self, public_key: bytes, *, preshared_key: bytes | None = None,
                 endpoint: Endpoint | None = None, persistent_keepalive: int = 0,
                 allowed_ips: tuple | list = (), name: str | None = None) -> Peer:
        if public_key == self.public_key:
            raise SuiteError("a peer cannot have this device's own public key",
                             "use the other side's public key in [Peer]")
        if public_key in self.peers:
            self.remove_peer(public_key)
        peer = Peer(self, public_key, preshared_key=preshared_key, endpoint=endpoint,
                    persistent_keepalive=persistent_keepalive, name=name)
        self.peers[public_key] = peer
        self._timers_all = True
        for net in allowed_ips:
            self.routes.insert(net, peer)
        return peer

    def update_peer(self, public_key: bytes, now: float, *, persistent_keepalive: int = 0,
                    allowed_ips: tuple | list = (), name: str | None = None) -> Peer:
        """Change a live peer's settings without touching its session, as ``wg syncconf`` does:
        new AllowedIPs take over cryptokey routing at once, and a new PersistentKeepalive starts
        (or stops) the keepalive timer."""
        peer = self.peers[public_key]
        self.routes.remove_value(peer)
        for net in allowed_ips:
            self.routes.insert(net, peer)
        self.set_persistent_keepalive(peer, persistent_keepalive, now)
        if name:
            peer.name = name
        return peer

    def set_persistent_keepalive(self, peer: Peer, seconds: int, now: float) -> bool:
        """Set a peer's PersistentKeepalive (0: off).  Returns True if it was off and is now on:
        the caller then sends a keepalive at once (:meth:`keepalive`), as wireguard-go does, so
        that a peer behind NAT opens its mapping without waiting for traffic."""
        was = peer.persistent_keepalive
        peer.persistent_keepalive = int(seconds or 0)
        peer.t_persistent = (now + peer.persistent_keepalive
                             if peer.persistent_keepalive and peer.current is not None else None)
        self._timers_moved.add(peer)
        return not was and bool(peer.persistent_keepalive)

    def forget_local_address(self, endpoint: Endpoint) -> None:
        """The IO layer could not send from the local address remembered in ``endpoint`` (its
        third element, see :data:`~vpnedu.protocol.cookie.Endpoint`): the address is gone.
        Peers at that endpoint send from whatever address the kernel picks until their next
        packet arrives ("sticky, but not too sticky")."""
        for peer in self.peers.values():
            if peer.endpoint == endpoint:
                peer.endpoint = endpoint[:2]

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.routes.remove_value(peer)
        self._zero_keys(peer)
        self._timers_moved.discard(peer)

    def peer_for(self, destination: bytes) -> Peer | None:
        """Cryptokey routing, sending side: which peer gets a packet for this address?"""
        return self.routes.lookup(destination)

    # ------------------------------------------------------------ helpers
    def _new_index(self, peer: Peer, obj: object) -> int:
        while True:
            idx = int.from_bytes(self.random(4), "little")
            if idx not in self._index:
                self._index[idx] = (peer, obj)
                return idx

    def _forget(self, index: int | None) -> None:
        if index is not None:
            self._index.pop(index, None)

    def _drop(self, reason: str, detail: str = "", peer: Peer | None = None,
              source: Endpoint | None = None, size: int = 0) -> None:
        self.counters["dropped." + reason] += 1
        ev = self.events
        if ev.wants("packet.dropped"):
            ev.emit("packet.dropped", peer.label if peer else None, reason=reason, detail=detail,
                    source=f"{source[0]}:{source[1]}" if source else None, size=size)

    def under_load(self, now: float) -> bool:
        """Must handshake messages carry a valid mac2 now?  True while a received batch held
        UNDER_LOAD_BATCH handshake messages, and for UNDER_LOAD_HOLD seconds after (the
        protocol's own view of load, as wireguard-go's ``IsUnderLoad``)."""
        return now < self.under_load_until

    def _note_load(self, handshakes: int, now: float) -> None:
        if not self.under_load(now):
            self.events.emit("handshake.under-load", None, batch=handshakes, hold=UNDER_LOAD_HOLD)
        self.under_load_until = now + UNDER_LOAD_HOLD

    # ------------------------------------------------------------ receiving
    def receive(self, data: bytes, source: Endpoint, now: float) -> Received:
        """Process one UDP datagram from ``source``: a batch of one."""
        out = self.receive_batch([(data, len(data), source)], now)
        return Received(out.all_datagrams(), out.packets)

    def receive_batch(self, reads: list[Read], now: float, out: Output | None = None) -> Output:
        """Process the datagrams one wakeup read (see :data:`Read`), in order.

        Transport data is opened here, in one loop: the session is looked up once per run of
        messages with the same receiver index from the same source, then per message the
        counter is checked against REJECT_AFTER_MESSAGES and the replay window (cheaply, before
        any decryption), the AEAD tag verified, the window moved, and the inner packet checked
        (a plausible IP packet; its source in the sending peer's AllowedIPs: cryptokey routing).
        Counters, roaming and the timer hooks run once per run.  Handshake messages and cookie
        replies go to their handlers one by one; a run is closed before each, so the timer hooks
        see events in the order they happened.
        """
        if out is None:
            out = Output()
        self.now = now
        # Everything the loop touches per message, bound to local names once per batch.
        reject_msgs, reject_time = self.timers.reject_after_messages, self.timers.reject_after_time
        index, unpack, ip_length = self._index, HEADER.unpack_from, _ip.ip_length
        ev, check_source, lookup = self.events, self.check_source, self.routes.lookup
        want = ev.wants("data.decrypted")
        deliver = out.packets.append
        src_cache: dict = {}
        transport = 0      # transport messages seen (for the counters)
        handshakes = 0     # handshake messages seen (under-load detection)
        # The open run: transport messages for one session from one source.
        run_idx = -1
        peer = kp = source = None
        confirm = False
        opened = nbytes = data = 0
        r_check = r_accept = opn = nonce = None
        for buf, seg, src in reads:
            if src != source:
                if opened:
                    self._received_run(peer, kp, opened, nbytes, data, source, now, out)
                    opened = nbytes = data = 0
                run_idx = -1
                source = src
            n = len(buf)
            if not n:
                self._receive_message(b"", src, now, out)
                continue
            if seg <= 0:
                seg = n
            for off in range(0, n, seg):
                d = buf if seg >= n else buf[off:off + seg]
                dl = len(d)
                if dl >= MIN_SIZE:
                    t, ridx, counter = unpack(d)
                else:
                    t = 0
                if t != TYPE:
                    # Anything but well-formed transport data: one message at a time.
                    if opened:
                        self._received_run(peer, kp, opened, nbytes, data, source, now, out)
                        opened = nbytes = data = 0
                    run_idx = -1
                    if d[0] == 1 or d[0] == 2:
                        handshakes += 1
                        if handshakes == UNDER_LOAD_BATCH:
                            self._note_load(handshakes, now)
                    self._receive_message(bytes(d), src, now, out)
                    continue
                transport += 1
                if ridx != run_idx:
                    if opened:
                        self._received_run(peer, kp, opened, nbytes, data, source, now, out)
                        opened = nbytes = data = 0
                    entry = index.get(ridx)
                    if entry is None or not isinstance(entry[1], TransportSession):
                        run_idx = -1
                        self._drop("unknown-index", f"no session has index {ridx:#010x}", source=src, size=dl)
                        continue
                    peer, kp = entry
                    if now - kp.created >= reject_time:
                        run_idx = -1
                        self._drop("expired-session", "the keys of this session are too old; a new "
                                   "handshake is needed", peer, src, dl)
                        continue
                    run_idx = ridx
                    r_check = kp.replay.check
                    r_accept = kp.replay.accept
                    opn = kp.receiver.decrypt
                    nonce = kp.receiver.nonce
                    confirm = kp is peer.next
                if counter >= reject_msgs:
                    self._drop("expired-session", "the keys of this session are too old; a new handshake "
                               "is needed", peer, src, dl)
                    continue
                if not r_check(counter):
                    self._drop("replay", f"counter {counter} was already received or is too old", peer, src, dl)
                    continue
                try:
                    plain = opn(nonce(counter), d[16:], None)
                except TagMismatch:
                    self._drop("bad-mac", "transport data does not authenticate (altered, or wrong keys)",
                               peer, src, dl)
                    continue
                if not r_accept(counter):
                    self._drop("replay", f"counter {counter} was already received", peer, src, dl)
                    continue
                if confirm:
                    confirm = False
                    self._confirm(peer, kp, now, out)
                opened += 1
                nbytes += dl
                if not plain:
                    if want:
                        ev.emit("data.decrypted", peer.label, counter=counter, keepalive=True,
                                ciphertext_len=dl - 16, plaintext_len=0)
                    continue
                data += 1
                length = ip_length(plain)
                if length is None:
                    self._drop("malformed-inner", "decrypted payload is not an IPv4/IPv6 packet", peer, src, dl)
                    continue
                padded = len(plain)
                if length != padded:
                    plain = plain[:length]
                if check_source:
                    addr = plain[12:16] if plain[0] >> 4 == 4 else plain[8:24]
                    owner = src_cache.get(addr, False)
                    if owner is False:
                        owner = src_cache[addr] = lookup(addr)
                    if owner is not peer:
                        self._drop("source-not-allowed", f"inner source {ipaddress.ip_address(addr)} is not "
                                   "in this peer's AllowedIPs", peer, src, dl)
                        continue
                if want:
                    ev.emit("data.decrypted", peer.label, counter=counter, keepalive=False,
                            ciphertext_len=dl - 16, plaintext_len=length, padded_len=padded,
                            packet=_ip.describe(plain))
                deliver((peer, plain))
        if opened:
            self._received_run(peer, kp, opened, nbytes, data, source, now, out)
        if transport:
            self.counters[_TRANSPORT_NAME] += transport
        return out

    def _received_run(self, peer: Peer, kp: TransportSession, packets: int, nbytes: int, data: int,
                      source: Endpoint, now: float, out: Output) -> None:
        """After ``packets`` transport messages of one session authenticated (``data`` of them
        not keepalives): roaming, counters, the timer hooks, a last-minute rekey."""
        self._set_endpoint(peer, source)
        self._timers_moved.add(peer)
        peer.rx_bytes += nbytes
        peer.rx_packets += packets
        t = self.timers
        tm.authenticated_received(peer, now)
        if tm.rekey_due_receiving(peer, now, t):
            self.events.emit("timer.rekey", peer.label, reason="keys near REJECT_AFTER_TIME while receiving")
            self._initiate(peer, now, out, retry=False)
        if data:
            tm.data_received(peer, now, t, data)

    def _confirm(self, peer: Peer, kp: TransportSession, now: float, out: Output) -> None:
        """The initiator used the new keys: the handshake is confirmed (responder side)."""
        self._forget(peer.previous.local_index if peer.previous else None)
        peer.previous, peer.current, peer.next = peer.current, kp, None
        peer.last_handshake = self.wall(now)
        self.counters["handshakes_completed"] += 1
        tm.handshake_complete(peer)
        self._timers_moved.add(peer)
        self.events.emit("session.confirmed", peer.label, local_index=kp.local_index)
        self._flush_staged(peer, now, out)

    def _receive_message(self, data: bytes, source: Endpoint, now: float, out: Output) -> None:
        """One datagram that is not well-formed transport data: a handshake message, a cookie
        reply, or something to drop."""
        try:
            mtype = msgs.message_type(data)
        except MessageError as e:
            self._drop("malformed", str(e), source=source, size=len(data))
            return
        self.counters["received." + msgs.TYPE_NAMES[mtype]] += 1
        if self.static is None and mtype in (msgs.INITIATION, msgs.RESPONSE):
            self._drop("no-private-key", "this interface has no private key yet, so it can neither answer "
                       "nor complete a handshake (wg set IFACE private-key FILE)", source=source, size=len(data))
            return
        try:
            if mtype == msgs.INITIATION:
                self._receive_initiation(data, source, now, out)
            elif mtype == msgs.RESPONSE:
                self._receive_response(data, source, now, out)
            elif mtype == msgs.COOKIE_REPLY:
                self._receive_cookie(data, source, now, out)
            else:
                self._drop("malformed", f"transport data of {len(data)} bytes is shorter than {MIN_SIZE}",
                           source=source, size=len(data))
        except MessageError as e:
            self._drop("malformed", str(e), source=source, size=len(data))

    def _check_handshake_macs(self, data: bytes, sender_index: int, source: Endpoint, now: float,
                              out: Output) -> bool:
        """mac1 always, mac2 when under load.  False means: stop here."""
        if not check_mac1(self.suite, data, self.mac_keys):
            for other, keys in self._other_suites:
                if other.hash_name != self.suite.hash_name and check_mac1(other, data, keys):
                    self._drop("suite-mismatch",
                               f"the sender uses cipher suite {other.name!r}, this side uses "
                               f"{self.suite.name!r}; set the same CipherSuite on both ends",
                               source=source, size=len(data))
                    return False
            self._drop("bad-mac1", "mac1 does not match our public key (not for us, or altered)",
                       source=source, size=len(data))
            return False
        if self.under_load(now) and not self.cookie_checker.check_mac2(data, source, now):
            nonce, sealed = self.cookie_checker.make_reply(data, sender_index, source, now)
            reply = msgs.CookieReply(sender_index, nonce, sealed).to_bytes()
            out.datagrams.append((reply, source))
            self.counters["cookie_replies_sent"] += 1
            self._drop("under-load", "no valid mac2 while under load: answered with a cookie reply",
                       source=source, size=len(data))
            self.events.emit("handshake.cookie.sent", None, receiver_index=sender_index,
                             to=f"{source[0]}:{source[1]}", nonce=nonce)
            return False
        return True

    def _diagnose_suite(self, msg: msgs.HandshakeInitiation) -> CipherSuite | None:
        """After a failed initiation, see if it decrypts under one of our other suites."""
        for other, _ in self._other_suites:
            if other.hash_name == self.suite.hash_name:
                try:
                    hs.consume_initiation(other, self.static, msg)
                    return other
                except hs.HandshakeError:
                    pass
        return None

    def _receive_initiation(self, data: bytes, source: Endpoint, now: float, out: Output) -> None:
        msg = msgs.HandshakeInitiation.from_bytes(data)
        if not self._check_handshake_macs(data, msg.sender, source, now, out):
            return
        try:
            init = hs.consume_initiation(self.suite, self.static, msg)
        except hs.HandshakeError as e:
            other = self._diagnose_suite(msg) if e.reason == "bad-mac" else None
            if other is not None:
                self._drop("suite-mismatch", f"the sender uses cipher suite {other.name!r}, this side "
                           f"uses {self.suite.name!r}; set the same CipherSuite on both ends",
                           source=source, size=len(data))
            else:
                self._drop(e.reason, e.detail, source=source, size=len(data))
            return
        peer = self.peers.get(init.remote_static)
        if peer is None:
            self._drop("unknown-peer", f"initiation from public key {_b64(init.remote_static)} that is "
                       "not one of our peers", source=source, size=len(data))
            return
        if not tai64n.is_newer(init.timestamp, peer.last_received_timestamp):
            self._drop("stale-timestamp", "timestamp not newer than the last accepted one (a replayed "
                       "initiation)", peer, source, len(data))
            return
        if now - peer.last_initiation_consumed < self.timers.initiation_rate:
            self._drop("initiation-flood", "initiations less than 20 ms apart", peer, source, len(data))
            return
        peer.last_received_timestamp = init.timestamp
        peer.last_initiation_consumed = now
        self.counters["handshake_initiations_received"] += 1
        self.events.emit("handshake.initiation.received", peer.label, sender_index=msg.sender,
                         ephemeral=_b64(msg.ephemeral), static=_b64(init.remote_static),
                         timestamp=tai64n.decode(init.timestamp), mac1=msg.mac1.hex(),
                         mac2=msg.mac2.hex(), source=f"{source[0]}:{source[1]}")

        # Answer with message 2 and derive the keys.
        e = self._ephemeral()
        self._log_secrets(peer, e)
        idx = self._new_index(peer, None)
        try:
            resp, keys = hs.create_response(self.suite, self.static, init, peer.psk, idx, e)
        except hs.HandshakeError as err:
            self._forget(idx)
            self._drop(err.reason, err.detail, peer, source, len(data))
            return
        packed, mac1, mac2 = add_macs(self.suite, resp.to_bytes(), peer.mac_keys, self._cookie(peer, now))
        peer.last_mac1 = mac1
        kp = TransportSession(self.suite, keys, now)
        self._index[idx] = (peer, kp)
        if peer.next is not None:
            self._forget(peer.next.local_index)
        peer.next = kp  # not used for sending until the initiator's first data confirms it
        self._set_endpoint(peer, source)
        tm.session_derived(peer, now, self.timers)
        tm.authenticated_sent(peer, now)
        self._timers_moved.add(peer)
        out.datagrams.append((packed, source))
        self.counters["handshake_responses_sent"] += 1
        self.events.emit("handshake.response.sent", peer.label, sender_index=idx, receiver_index=msg.sender,
                         ephemeral=_b64(e.public), mac1=mac1.hex(), mac2=mac2.hex())
        self.events.emit("session.established", peer.label, role="responder", local_index=idx,
                         remote_index=msg.sender, suite=self.suite.name)

    def _receive_response(self, data: bytes, source: Endpoint, now: float, out: Output) -> None:
        msg = msgs.HandshakeResponse.from_bytes(data)
        if not self._check_handshake_macs(data, msg.sender, source, now, out):
            return
        entry = self._index.get(msg.receiver)
        if entry is None or not isinstance(entry[1], hs.InitiatorState) or entry[0].handshake is not entry[1]:
            self._drop("unknown-index", f"response for index {msg.receiver:#010x} which has no handshake "
                       "in flight", source=source, size=len(data))
            return
        peer, state = entry
        try:
            keys = hs.consume_response(self.suite, self.static, state, msg)
        except hs.HandshakeError as e:
            self._drop(e.reason, e.detail, peer, source, len(data))
            return
        peer.handshake = None
        kp = TransportSession(self.suite, keys, now)
        self._index[msg.receiver] = (peer, kp)
        # Rotate: the new session becomes current at once (we are the initiator).
        if peer.next is not None:
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous, peer.next = peer.next, None
        else:
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous = peer.current
        peer.current = kp
        self._set_endpoint(peer, source)
        peer.last_handshake = self.wall(now)
        self.counters["handshakes_completed"] += 1
        tm.session_derived(peer, now, self.timers)
        tm.handshake_complete(peer)
        tm.authenticated_received(peer, now)
        self._timers_moved.add(peer)
        self.events.emit("handshake.response.received", peer.label, sender_index=msg.sender,
                         receiver_index=msg.receiver, ephemeral=_b64(msg.ephemeral),
                         mac1=msg.mac1.hex(), mac2=msg.mac2.hex())
        self.events.emit("session.established", peer.label, role="initiator", local_index=msg.receiver,
                         remote_index=msg.sender, suite=self.suite.name)
        # Confirm the session to the responder: send queued packets, or an empty keepalive.
        if not peer.staged:
            peer.staged.append(b"")
        self._flush_staged(peer, now, out)

    def _receive_cookie(self, data: bytes, source: Endpoint, now: float, out: Output) -> None:
        msg = msgs.CookieReply.from_bytes(data)
        entry = self._index.get(msg.receiver)
        if entry is None:
            self._drop("unknown-index", f"cookie reply for unknown index {msg.receiver:#010x}",
                       source=source, size=len(data))
            return
        peer = entry[0]
        if peer.last_mac1 is None:
            self._drop("bad-cookie", "cookie reply but we sent no handshake message", peer, source, len(data))
            return
        cookie = open_cookie(self.suite, peer.mac_keys, msg.nonce, msg.encrypted_cookie, peer.last_mac1)
        if cookie is None:
            self._drop("bad-cookie", "cookie reply does not decrypt", peer, source, len(data))
            return
        peer.cookie, peer.cookie_time = cookie, now
        self.counters["cookie_replies_received"] += 1
        self.events.emit("handshake.cookie.received", peer.label, receiver_index=msg.receiver,
                         nonce=msg.nonce.hex())

    def _set_endpoint(self, peer: Peer, source: Endpoint) -> None:
        old = peer.endpoint
        if old != source:
            peer.endpoint = source
            # Only the remote address and port make a roam; the local address we received on
            # (a third element) is remembered silently, to reply from it.
            if old is not None and old[:2] != source[:2]:
                self.events.emit("peer.roamed", peer.label, old=format_endpoint(old),
                                 new=format_endpoint(source))

    # ------------------------------------------------------------ sending
    def send_packet(self, packet: bytes, now: float) -> list[Datagram]:
        """An IP packet read from TUN: route it to its peer by destination and encrypt it
        (a batch of one)."""
        return self.send_packets([packet], now).all_datagrams()

    def send(self, peer: Peer, packet: bytes, now: float) -> list[Datagram]:
        """Encrypt ``packet`` (b"" for a keepalive) for ``peer``, or queue it and start a
        handshake (a batch of one)."""
        return self.send_batch(peer, [packet], now).all_datagrams()

    def keepalive(self, peer: Peer, now: float) -> list[Datagram]:
        """Send an empty keepalive now (as wireguard-go does when a PersistentKeepalive is set)."""
        return self.send(peer, b"", now)

    def send_packets(self, packets: list, now: float, out: Output | None = None) -> Output:
        """IP packets read from TUN: cryptokey routing (the peer whose AllowedIPs hold each
        destination, looked up once per destination in the batch), then one
        :meth:`send_batch` per peer, each peer's packets in the order they came."""
        if out is None:
            out = Output()
        lookup = self.routes.lookup
        cache: dict = {}
        groups: dict[Peer, list] = {}
        for p in packets:
            n = len(p)
            v = p[0] >> 4 if n else 0
            # A plausible IPv4/IPv6 packet (the length it claims fits) and its destination.
            if v == 4 and n >= 20 and 20 <= (p[2] << 8 | p[3]) <= n:
                dst = bytes(p[16:20])
            elif v == 6 and n >= 40 and 40 + (p[4] << 8 | p[5]) <= n:
                dst = bytes(p[24:40])
            else:
                dst = None
            peer = cache.get(dst, False)
            if peer is False:
                peer = cache[dst] = lookup(dst) if dst is not None else None
            if peer is None:
                self._drop("no-route", f"no peer's AllowedIPs holds the destination of: {_ip.describe(bytes(p))}",
                           size=n)
                continue
            q = groups.get(peer)
            if q is None:
                groups[peer] = [p]
            else:
                q.append(p)
        for peer, q in groups.items():
            self.send_batch(peer, q, now, out)
        return out

    def send_batch(self, peer: Peer, packets: list, now: float, out: Output | None = None) -> Output:
        """Encrypt ``packets`` (b"" is a keepalive) for ``peer`` with its current session, into
        ``out``; or, with no usable session, queue them and start a handshake.

        A batch behaves exactly as its packets sent one by one at the same ``now``: the session
        may send only until REJECT_AFTER_MESSAGES (the rest waits for new keys), and the timer
        hooks (:func:`~vpnedu.protocol.timers.authenticated_sent`, :func:`~.timers.data_sent`)
        and the rekey check run once, with the batch's counts."""
        if out is None:
            out = Output()
        self.now = now
        t = self.timers
        kp = peer.current
        if kp is not None and self._usable(peer, kp, now):
            ep = peer.endpoint
            if ep is None:
                for p in packets:
                    self._drop("no-endpoint", "the peer's address is unknown (it has not contacted us yet)",
                               peer, size=len(p))
                return out
            room = t.reject_after_messages - kp.send_counter
            batch = packets if room >= len(packets) else packets[:room]
            report = self._reporter(peer) if self.events.wants("data.encrypted") else None
            nbytes, data = seal_batch(kp, batch, self.mtu, ep, out, report)
            peer.tx_bytes += nbytes
            peer.tx_packets += len(batch)
            tm.authenticated_sent(peer, now)
            if data:
                tm.data_sent(peer, now, t)
            self._timers_moved.add(peer)
            if tm.rekey_due_sending(kp, now, t):
                if now - peer.last_initiation_sent >= t.rekey_timeout:
                    self.events.emit("timer.rekey", peer.label, reason="REKEY_AFTER_TIME or "
                                     "REKEY_AFTER_MESSAGES reached while sending")
                self._initiate(peer, now, out, retry=False)
            if batch is packets:
                return out
            packets = packets[room:]
            self._usable(peer, kp, now)   # used up: marks the session expired
        # No usable session: queue the packets and (maybe) start a handshake.
        for p in packets:
            if len(peer.staged) >= peer.max_staged:
                peer.staged.popleft()
                self._drop("queue-full", "too many packets waiting for a handshake", peer, size=len(p))
            peer.staged.append(bytes(p))
            self.events.emit("data.queued", peer.label, size=len(p), queued=len(peer.staged))
        self._initiate(peer, now, out, retry=False)
        return out

    def _reporter(self, peer: Peer):
        """The per-packet ``data.encrypted`` event, for :func:`~.transport.seal_batch`."""
        emit, label = self.events.emit, peer.label

        def report(counter: int, packet, padded: int, dlen: int) -> None:
            n = len(packet)
            emit("data.encrypted", label, counter=counter, keepalive=(n == 0), plaintext_len=n,
                 padded_len=padded, ciphertext_len=dlen - 16, datagram_len=dlen,
                 packet=_ip.describe(bytes(packet)) if n else "keepalive")
        return report

    def _usable(self, peer: Peer, kp: TransportSession, now: float) -> bool:
        if now - kp.created < self.timers.reject_after_time and kp.send_counter < self.timers.reject_after_messages:
            return True
        if peer.current is kp:
            self.events.emit("session.expired", peer.label, local_index=kp.local_index,
                             age=round(now - kp.created, 3), sent=kp.send_counter)
            self.counters["sessions_expired"] += 1
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous, peer.current = kp, None
        return False

    def _flush_staged(self, peer: Peer, now: float, out: Output) -> None:
        """A session is ready: send what waited for it."""
        if peer.staged:
            staged = list(peer.staged)
            peer.staged.clear()
            self.send_batch(peer, staged, now, out)

    def _cookie(self, peer: Peer, now: float) -> bytes | None:
        if peer.cookie is not None and now - peer.cookie_time < COOKIE_REFRESH_TIME:
            return peer.cookie
        return None

    def initiate(self, peer: Peer, now: float) -> list[Datagram]:
        """Start a handshake with ``peer`` now (a client does this when it comes up)."""
        out = Output()
        self._initiate(peer, now, out, retry=False)
        return out.all_datagrams()

    def _initiate(self, peer: Peer, now: float, out: Output, retry: bool) -> None:
        self.now = now
        if not retry:
            peer.handshake_attempts = 0
        # Never more than one initiation per REKEY_TIMEOUT (paper 6.1).
        if now - peer.last_initiation_sent < self.timers.rekey_timeout:
            return
        if peer.endpoint is None:
            self._drop("no-endpoint", "cannot start a handshake: the peer's endpoint is unknown", peer)
            return
        if self.static is None:
            self._drop("no-private-key", "cannot start a handshake: this interface has no private key", peer)
            return
        peer.last_initiation_sent = now
        if peer.handshake is not None:
            self._forget(peer.handshake.local_index)
        idx = self._new_index(peer, None)
        stamp = tai64n.encode(self.wall(now))
        e = self._ephemeral()
        self._log_secrets(peer, e)
        try:
            msg, state = hs.create_initiation(self.suite, self.static, peer.public_key, peer.psk, idx, stamp, e)
        except hs.HandshakeError as err:
            self._forget(idx)
            self._drop(err.reason, err.detail, peer)
            return
        self._index[idx] = (peer, state)
        peer.handshake = state
        packed, mac1, mac2 = add_macs(self.suite, msg.to_bytes(), peer.mac_keys, self._cookie(peer, now))
        peer.last_mac1 = mac1
        tm.handshake_initiated(peer, now, self.timers, self.jitter(self.timers.max_jitter))
        tm.authenticated_sent(peer, now)
        self._timers_moved.add(peer)
        self.counters["handshake_initiations_sent"] += 1
        self.events.emit("handshake.initiation.sent", peer.label, sender_index=idx,
                         ephemeral=_b64(msg.ephemeral), timestamp=tai64n.decode(stamp),
                         encrypted_static=msg.encrypted_static.hex(),
                         encrypted_timestamp=msg.encrypted_timestamp.hex(),
                         mac1=mac1.hex(), mac2=mac2.hex(), attempt=peer.handshake_attempts + 1,
                         to=f"{peer.endpoint[0]}:{peer.endpoint[1]}")
        out.datagrams.append((packed, peer.endpoint))

    def _log_secrets(self, peer: Peer, ephemeral: X25519KeyPair) -> None:
        """Key-log lines in the format of Wireshark's WireGuard dissector (wg.keylog_file):
        with our static and ephemeral private keys it can decrypt the handshake and, from it,
        every transport message of the session."""
        if self.keylog is None:
            return
        self.keylog(f"LOCAL_STATIC_PRIVATE_KEY = {_encode(self.static.private)}\n"
                    f"REMOTE_STATIC_PUBLIC_KEY = {_encode(peer.public_key)}\n"
                    f"LOCAL_EPHEMERAL_PRIVATE_KEY = {_encode(ephemeral.private)}\n"
                    f"PRESHARED_KEY = {_encode(peer.psk)}\n")

    # ------------------------------------------------------------ timers
    def _zero_keys(self, peer: Peer) -> None:
        for kp in peer.sessions():
            self._forget(kp.local_index)
        if peer.handshake is not None:
            self._forget(peer.handshake.local_index)
        peer.current = peer.previous = peer.next = None
        peer.handshake = None
        peer.t_zero_keys = None

    def next_deadline(self, *, changed_only: bool = False) -> float | None:
        """When :meth:`tick` next has work to do (monotonic seconds), or None.

        ``changed_only``: the earliest deadline among the peers whose timers moved since the last
        call, for a caller that keeps a timer armed for the earliest of all and only ever moves it
        earlier (the daemons, after every wakeup).  That is all it needs: a deadline that did not
        move is no earlier than what it armed last time, and one that moved later only makes its
        timer fire early, once, to a :meth:`tick` with nothing to do and a full look.  Looking at
        every peer after every wakeup cost a server 47 us with 200 peers and 260 us with 1000
        (mostly idle) ones; this costs what the wakeup's own peers do."""
        if changed_only and not self._timers_all:
            peers = self._timers_moved
        else:
            peers = self.peers.values()
        best = None
        for peer in peers:
            for t in peer.deadlines():
                if best is None or t < best:
                    best = t
        self._timers_moved.clear()
        self._timers_all = False
        return best

    def tick(self, now: float) -> list[Datagram]:
        """Run every timer that has expired (:func:`vpnedu.protocol.timers.expired`); returns
        what must be sent."""
        self.now = now
        out = Output()
        timers = self.timers
        self._timers_all = True     # the hooks below move timers of any peer
        for peer in list(self.peers.values()):
            for what in tm.expired(peer, now, timers):
                if what == "give-up":
                    dropped = len(peer.staged)
                    peer.staged.clear()
                    if dropped:
                        self.counters["dropped.handshake-timeout"] += dropped
                    self.counters["handshake_timeouts"] += 1
                    self.events.emit("handshake.timeout", peer.label, attempts=peer.handshake_attempts + 1,
                                     seconds=timers.rekey_attempt_time, dropped_packets=dropped)
                elif what == "retransmit":
                    self.events.emit("timer.retransmit", peer.label, attempt=peer.handshake_attempts + 1)
                    self._initiate(peer, now, out, retry=True)
                elif what == "keepalive":
                    again = peer.need_another_keepalive
                    self.events.emit("timer.keepalive", peer.label, mode="passive")
                    self.send_batch(peer, [b""], now, out)
                    if again:   # one more was owed (data kept coming while this one was armed)
                        peer.t_keepalive = now + timers.keepalive_timeout
                elif what == "new-handshake":
                    self.events.emit("timer.rekey", peer.label,
                                     reason="sent data but received nothing for KEEPALIVE + REKEY_TIMEOUT")
                    self._initiate(peer, now, out, retry=False)
                elif what == "zero-keys":
                    self._zero_keys(peer)
                    self.events.emit("session.zeroed", peer.label)
                elif what == "persistent":
                    self.events.emit("timer.keepalive", peer.label, mode="persistent")
                    self.send_batch(peer, [b""], now, out)
        return out.all_datagrams()

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        return {
            "name": self.name,
            "public_key": _b64(self.static.public) if self.static is not None else None,
            "suite": self.suite.name,
            "peers": [p.status() for p in self.peers.values()],
            "counters": dict(self.counters),
        }
