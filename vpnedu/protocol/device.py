"""The protocol engine of one WireGuard interface, sans-IO.

A :class:`Device` is what a WireGuard interface knows: its own static key,
its peers, and a table from the 32-bit *indices* in received messages to the
handshake or session they belong to.  It never touches a socket, a TUN device
or a clock of its own.  The IO code around it does three things:

* a datagram arrived on UDP  -> :meth:`Device.receive` -> datagrams to send,
  IP packets to write to TUN;
* an IP packet was read from TUN -> :meth:`Device.send_packet` (or
  :meth:`Device.send` for a known peer) -> datagrams to send;
* time passed -> :meth:`Device.tick` -> datagrams to send (retries, keepalives);
  :meth:`Device.next_deadline` says when to call it next.

Time comes from the injected ``clock`` (monotonic seconds) and ``wallclock``
(Unix time, only for TAI64N timestamps), randomness from ``random``; a test
passes fakes and gets a fully deterministic protocol.

Whatever the core throws away is reported as a ``packet.dropped`` event with a
``reason``, and counted in :attr:`Device.counters` whether or not anyone
listens.  Nothing a remote party sends can raise an exception out of
:meth:`receive`.
"""

from __future__ import annotations

import ipaddress
import os
import random as _random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .. import events as _events
from ..errors import MessageError, SuiteError
from ..packet import ip as _ip
from . import handshake as hs
from . import messages as msgs
from . import tai64n
from .allowedips import AllowedIPs
from .cookie import COOKIE_REFRESH_TIME, CookieChecker, Endpoint, MacKeys, add_macs, check_mac1, open_cookie
from .keys import KeyPair
from .keys import encode as _encode
from .peer import Peer
from .session import Keypair
from .suites import SUITES, WIREGUARD, AEADError, CipherSuite, get_suite
from .timers import DEFAULT_TIMERS, Timers

Datagram = tuple[bytes, Endpoint]

_HEADER = struct.Struct("<IIQ")
_PAD = bytes(16)
#: Default inner MTU: 1500 minus 20 (IPv4) + 8 (UDP) + 32 (WireGuard header and tag) + 20 spare for IPv6.
DEFAULT_MTU = 1420


@dataclass(slots=True)
class Received:
    """What :meth:`Device.receive` produced."""

    #: Datagrams to send in reply (handshake responses, cookie replies, keepalives, queued data).
    datagrams: list[Datagram] = field(default_factory=list)
    #: Decrypted IP packets to hand to the TUN device, with the peer they came from.
    packets: list[tuple[Peer, bytes]] = field(default_factory=list)


def _b64(key: bytes) -> str:
    return _encode(key)


class Device:
    """One side of WireGuard: a static key, peers, indices and the timer state machine."""

    def __init__(self, private_key: bytes, *, suite: str | CipherSuite = WIREGUARD,
                 allow_insecure: bool = False, events: _events.EventBus | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time,
                 random: Callable[[int], bytes] = os.urandom,
                 jitter: Callable[[float], float] | None = None,
                 timers: Timers = DEFAULT_TIMERS, mtu: int = DEFAULT_MTU,
                 under_load: Callable[[], bool] | None = None,
                 check_source: bool = True, name: str = "device"):
        if isinstance(suite, str):
            suite = get_suite(suite, allow_insecure=allow_insecure)
        elif suite.insecure and not allow_insecure:
            get_suite(suite.name, allow_insecure=False)  # raises the standard SuiteError
        self.suite = suite
        self.static = KeyPair(private_key)
        self.events = events if events is not None else _events.EventBus(clock=wallclock)
        self.clock = clock
        self.wallclock = wallclock
        self.random = random
        self.jitter = jitter or (lambda limit: _random.uniform(0, limit))
        self.timers = timers
        self.mtu = mtu
        #: Called for every handshake message; when it returns True, mac2 is enforced.
        self.under_load = under_load or (lambda: False)
        #: Enforce cryptokey routing on received packets (source must be in the peer's AllowedIPs).
        self.check_source = check_source
        self.name = name
        self.peers: dict[bytes, Peer] = {}
        self.routes: AllowedIPs[Peer] = AllowedIPs()
        self._index: dict[int, tuple[Peer, object]] = {}
        self.cookie_checker = CookieChecker(suite, self.static.public, clock, random)
        self.mac_keys = self.cookie_checker.keys
        # mac1 keys of the *other* suites, only to explain a suite mismatch in a drop event.
        self._other_suites = [(s, MacKeys(s, self.static.public)) for s in SUITES.values() if s is not suite]
        #: Always-on counters: drops by reason, handshakes, messages by type.
        self.counters: Counter[str] = Counter()
        #: If set, called with Wireshark key-log lines for every handshake (``--keylog``).
        self.keylog: Callable[[str], None] | None = None

    @property
    def public_key(self) -> bytes:
        return self.static.public

    # ------------------------------------------------------------------ peers
    def add_peer(self, public_key: bytes, *, preshared_key: bytes | None = None,
                 endpoint: Endpoint | None = None, persistent_keepalive: int = 0,
                 allowed_ips: tuple | list = (), name: str | None = None) -> Peer:
        if public_key == self.static.public:
            raise SuiteError("a peer cannot have this device's own public key",
                             "use the other side's public key in [Peer]")
        if public_key in self.peers:
            self.remove_peer(public_key)
        peer = Peer(self, public_key, preshared_key=preshared_key, endpoint=endpoint,
                    persistent_keepalive=persistent_keepalive, allowed_ips=allowed_ips, name=name)
        self.peers[public_key] = peer
        for net in peer.allowed_ips:
            self.routes.insert(net, peer)
        return peer

    def update_peer(self, public_key: bytes, *, persistent_keepalive: int = 0,
                    allowed_ips: tuple | list = (), name: str | None = None) -> Peer:
        """Change a live peer's settings without touching its session, as ``wg syncconf`` does:
        new AllowedIPs take over cryptokey routing at once, and a new PersistentKeepalive starts
        (or stops) the keepalive timer."""
        peer = self.peers[public_key]
        self.routes.remove_value(peer)
        peer.allowed_ips = [ipaddress.ip_network(n, strict=False) for n in allowed_ips]
        for net in peer.allowed_ips:
            self.routes.insert(net, peer)
        peer.persistent_keepalive = int(persistent_keepalive or 0)
        peer.t_persistent = (self.clock() + peer.persistent_keepalive
                             if peer.persistent_keepalive and peer.current is not None else None)
        if name:
            peer.name = name
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.routes.remove_value(peer)
        self._zero_keys(peer)

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

    # ------------------------------------------------------------ receiving
    def receive(self, data: bytes, source: Endpoint, now: float | None = None) -> Received:
        """Process one UDP datagram from ``source``."""
        if now is None:
            now = self.clock()
        out = Received()
        try:
            mtype = msgs.message_type(data)
        except MessageError as e:
            self._drop("malformed", str(e), source=source, size=len(data))
            return out
        self.counters["received." + msgs.TYPE_NAMES[mtype]] += 1
        try:
            if mtype == msgs.TRANSPORT_DATA:
                self._receive_data(data, source, now, out)
            elif mtype == msgs.INITIATION:
                self._receive_initiation(data, source, now, out)
            elif mtype == msgs.RESPONSE:
                self._receive_response(data, source, now, out)
            else:
                self._receive_cookie(data, source, now, out)
        except MessageError as e:
            self._drop("malformed", str(e), source=source, size=len(data))
        return out

    def _check_handshake_macs(self, data: bytes, sender_index: int, source: Endpoint,
                              out: Received) -> bool:
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
        if self.under_load() and not self.cookie_checker.check_mac2(data, source):
            nonce, sealed = self.cookie_checker.make_reply(data, sender_index, source)
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

    def _receive_initiation(self, data: bytes, source: Endpoint, now: float, out: Received) -> None:
        msg = msgs.HandshakeInitiation.from_bytes(data)
        if not self._check_handshake_macs(data, msg.sender, source, out):
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
        e = KeyPair()
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
        kp = Keypair(self.suite, keys, now)
        self._index[idx] = (peer, kp)
        if peer.next is not None:
            self._forget(peer.next.local_index)
        peer.next = kp  # not used for sending until the initiator's first data confirms it
        self._set_endpoint(peer, source)
        self._session_derived(peer, now)
        self._authenticated_sent(peer, now)
        out.datagrams.append((packed, source))
        self.counters["handshake_responses_sent"] += 1
        self.events.emit("handshake.response.sent", peer.label, sender_index=idx, receiver_index=msg.sender,
                         ephemeral=_b64(e.public), mac1=mac1.hex(), mac2=mac2.hex())
        self.events.emit("session.established", peer.label, role="responder", local_index=idx,
                         remote_index=msg.sender, suite=self.suite.name)

    def _receive_response(self, data: bytes, source: Endpoint, now: float, out: Received) -> None:
        msg = msgs.HandshakeResponse.from_bytes(data)
        if not self._check_handshake_macs(data, msg.sender, source, out):
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
        kp = Keypair(self.suite, keys, now)
        self._index[msg.receiver] = (peer, kp)
        # Rotate: the new keypair becomes current at once (we are the initiator).
        if peer.next is not None:
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous, peer.next = peer.next, None
        else:
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous = peer.current
        peer.current = kp
        self._set_endpoint(peer, source)
        peer.last_handshake = self.wallclock()
        self.counters["handshakes_completed"] += 1
        self._session_derived(peer, now)
        self._handshake_complete(peer)
        self._authenticated_received(peer, now)
        self.events.emit("handshake.response.received", peer.label, sender_index=msg.sender,
                         receiver_index=msg.receiver, ephemeral=_b64(msg.ephemeral),
                         mac1=msg.mac1.hex(), mac2=msg.mac2.hex())
        self.events.emit("session.established", peer.label, role="initiator", local_index=msg.receiver,
                         remote_index=msg.sender, suite=self.suite.name)
        # Confirm the session to the responder: send queued packets, or an empty keepalive.
        if not peer.staged:
            peer.staged.append(b"")
        self._flush_staged(peer, now, out.datagrams)

    def _receive_cookie(self, data: bytes, source: Endpoint, now: float, out: Received) -> None:
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

    def _receive_data(self, data: bytes, source: Endpoint, now: float, out: Received) -> None:
        n = len(data)
        if n < msgs.TRANSPORT_MIN_SIZE:
            self._drop("malformed", f"transport data of {n} bytes is shorter than {msgs.TRANSPORT_MIN_SIZE}",
                       source=source, size=n)
            return
        _, receiver, counter = _HEADER.unpack_from(data)
        entry = self._index.get(receiver)
        if entry is None or not isinstance(entry[1], Keypair):
            self._drop("unknown-index", f"no session has index {receiver:#010x}", source=source, size=n)
            return
        peer, kp = entry
        timers = self.timers
        if counter >= timers.reject_after_messages or now - kp.created >= timers.reject_after_time:
            self._drop("expired-session", "the keys of this session are too old; a new handshake is "
                       "needed", peer, source, n)
            return
        if not kp.replay.check(counter):
            self._drop("replay", f"counter {counter} was already received or is too old", peer, source, n)
            return
        try:
            plain = kp.receiver.open(counter, data[16:])
        except AEADError:
            self._drop("bad-mac", "transport data does not authenticate (altered, or wrong keys)",
                       peer, source, n)
            return
        if not kp.replay.accept(counter):
            self._drop("replay", f"counter {counter} was already received", peer, source, n)
            return
        if kp is peer.next:
            # The initiator used the new keys: the handshake is confirmed (responder side).
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous, peer.current, peer.next = peer.current, kp, None
            peer.last_handshake = self.wallclock()
            self.counters["handshakes_completed"] += 1
            self._handshake_complete(peer)
            self.events.emit("session.confirmed", peer.label, local_index=kp.local_index)
            self._flush_staged(peer, now, out.datagrams)
        self._set_endpoint(peer, source)
        peer.rx_bytes += n
        peer.rx_packets += 1
        self._authenticated_received(peer, now)
        # An initiator whose keys are about to expire renews them even if it sends nothing.
        cur = peer.current
        if (cur is not None and cur.initiator and not peer.sent_last_minute_handshake
                and now - cur.created >= timers.receive_rekey_age):
            peer.sent_last_minute_handshake = True
            self.events.emit("timer.rekey", peer.label, reason="keys near REJECT_AFTER_TIME while receiving")
            out.datagrams.extend(self._initiate(peer, now, retry=False))
        ev = self.events
        if not plain:
            if ev.wants("data.decrypted"):
                ev.emit("data.decrypted", peer.label, counter=counter, keepalive=True,
                        ciphertext_len=n - 16, plaintext_len=0)
            return
        # Data received: owe the peer a keepalive if we have nothing to send back.
        if peer.t_keepalive is None:
            peer.t_keepalive = now + timers.keepalive_timeout
        else:
            peer.need_another_keepalive = True
        length = _ip.ip_length(plain)
        if length is None:
            self._drop("malformed-inner", "decrypted payload is not an IPv4/IPv6 packet", peer, source, n)
            return
        packet = plain[:length]
        if self.check_source and self.routes.lookup(_ip.source_address(packet)) is not peer:
            self._drop("source-not-allowed", f"inner source {_src(packet)} is not in this peer's AllowedIPs",
                       peer, source, n)
            return
        if ev.wants("data.decrypted"):
            ev.emit("data.decrypted", peer.label, counter=counter, keepalive=False, ciphertext_len=n - 16,
                    plaintext_len=length, padded_len=len(plain), packet=_ip.describe(packet))
        out.packets.append((peer, packet))

    def _set_endpoint(self, peer: Peer, source: Endpoint) -> None:
        if peer.endpoint != source:
            old = peer.endpoint
            peer.endpoint = source
            if old is not None:
                self.events.emit("peer.roamed", peer.label, old=f"{old[0]}:{old[1]}",
                                 new=f"{source[0]}:{source[1]}")

    # ------------------------------------------------------------ sending
    def send_packet(self, packet: bytes, now: float | None = None) -> list[Datagram]:
        """An IP packet read from TUN: route it to its peer by destination and encrypt it."""
        peer = self.routes.lookup(_ip.destination_address(packet)) if _ip.ip_length(packet) else None
        if peer is None:
            self._drop("no-route", f"no peer's AllowedIPs holds the destination of: {_ip.describe(packet)}",
                       size=len(packet))
            return []
        return self.send(peer, packet, now)

    def send(self, peer: Peer, packet: bytes, now: float | None = None) -> list[Datagram]:
        """Encrypt ``packet`` (b"" for a keepalive) for ``peer``, or queue it and start a handshake."""
        if now is None:
            now = self.clock()
        out: list[Datagram] = []
        kp = peer.current
        if kp is not None and self._usable(peer, kp, now):
            self._encrypt(peer, kp, packet, now, out)
            if (kp.initiator and (kp.send_counter > self.timers.rekey_after_messages
                                  or now - kp.created >= self.timers.rekey_after_time)):
                if now - peer.last_initiation_sent >= self.timers.rekey_timeout:
                    self.events.emit("timer.rekey", peer.label, reason="REKEY_AFTER_TIME or "
                                     "REKEY_AFTER_MESSAGES reached while sending")
                out.extend(self._initiate(peer, now, retry=False))
            return out
        # No usable session: queue the packet and (maybe) start a handshake.
        if len(peer.staged) >= peer.max_staged:
            peer.staged.popleft()
            self._drop("queue-full", "too many packets waiting for a handshake", peer, size=len(packet))
        peer.staged.append(packet)
        self.events.emit("data.queued", peer.label, size=len(packet), queued=len(peer.staged))
        out.extend(self._initiate(peer, now, retry=False))
        return out

    def keepalive(self, peer: Peer, now: float | None = None) -> list[Datagram]:
        """Send an empty keepalive now (as wireguard-go does when a PersistentKeepalive is set)."""
        return self.send(peer, b"", now)

    def _usable(self, peer: Peer, kp: Keypair, now: float) -> bool:
        if now - kp.created < self.timers.reject_after_time and kp.send_counter < self.timers.reject_after_messages:
            return True
        if peer.current is kp:
            self.events.emit("session.expired", peer.label, local_index=kp.local_index,
                             age=round(now - kp.created, 3), sent=kp.send_counter)
            self.counters["sessions_expired"] += 1
            self._forget(peer.previous.local_index if peer.previous else None)
            peer.previous, peer.current = kp, None
        return False

    def _encrypt(self, peer: Peer, kp: Keypair, packet: bytes, now: float, out: list[Datagram]) -> None:
        counter = kp.send_counter
        kp.send_counter = counter + 1
        n = len(packet)
        # Pad to a multiple of 16 (hides exact sizes), but never past the MTU (paper 5.4.6).
        unit = n % self.mtu if n > self.mtu else n
        padded = min(-(-unit // 16) * 16, self.mtu) if self.mtu else -(-unit // 16) * 16
        pad = padded - unit
        plaintext = packet + _PAD[:pad] if pad > 0 else packet
        datagram = _HEADER.pack(4, kp.remote_index, counter) + kp.sender.seal(counter, plaintext)
        endpoint = peer.endpoint
        if endpoint is None:
            self._drop("no-endpoint", "the peer's address is unknown (it has not contacted us yet)", peer,
                       size=n)
            return
        out.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)
        peer.tx_packets += 1
        ev = self.events
        if ev.wants("data.encrypted"):
            ev.emit("data.encrypted", peer.label, counter=counter, keepalive=(n == 0), plaintext_len=n,
                    padded_len=len(plaintext), ciphertext_len=len(datagram) - 16, datagram_len=len(datagram),
                    packet=_ip.describe(packet) if n else "keepalive")
        self._authenticated_sent(peer, now)
        if n:
            # Data sent: expect something back within KEEPALIVE + REKEY_TIMEOUT.
            if peer.t_new_handshake is None:
                peer.t_new_handshake = now + self.timers.keepalive_timeout + self.timers.rekey_timeout

    # ------------------------------------------------------------ fast-path helpers
    # The fast datapath (vpnedu.datapath) encrypts and decrypts whole batches itself, with the
    # same keypairs, counters and replay windows, and calls these once per batch so that
    # counters, timers and rekeys end up as if every packet had gone through send()/receive().

    def fast_send_keypair(self, peer: Peer, count: int, now: float) -> Keypair | None:
        """The keypair with which the fast path may encrypt ``count`` data packets for ``peer``
        now, or None: then use :meth:`send` (no session yet, keys expiring, no endpoint)."""
        kp = peer.current
        timers = self.timers
        if (kp is None or peer.endpoint is None or now - kp.created >= timers.reject_after_time
                or kp.send_counter + count >= timers.reject_after_messages):
            return None
        return kp

    def fast_sent(self, peer: Peer, kp: Keypair, packets: int, nbytes: int, now: float) -> list[Datagram]:
        """Bookkeeping after the fast path sent ``packets`` data messages (``nbytes`` bytes on the
        wire) with ``kp``: counters, timers and, when due, a rekey (what :meth:`send` does)."""
        peer.tx_bytes += nbytes
        peer.tx_packets += packets
        self._authenticated_sent(peer, now)
        if peer.t_new_handshake is None:
            peer.t_new_handshake = now + self.timers.keepalive_timeout + self.timers.rekey_timeout
        if (kp.initiator and (kp.send_counter > self.timers.rekey_after_messages
                              or now - kp.created >= self.timers.rekey_after_time)):
            if now - peer.last_initiation_sent >= self.timers.rekey_timeout:
                self.events.emit("timer.rekey", peer.label, reason="REKEY_AFTER_TIME or "
                                 "REKEY_AFTER_MESSAGES reached while sending")
            return self._initiate(peer, now, retry=False)
        return []

    def fast_received(self, peer: Peer, kp: Keypair, packets: int, nbytes: int, data_packets: int,
                      source: Endpoint, now: float) -> list[Datagram]:
        """Bookkeeping after the fast path accepted ``packets`` transport messages (``nbytes``
        bytes, ``data_packets`` of them not keepalives) for ``kp`` from ``source``: roaming,
        counters, timers, the initiator's last-minute rekey (what :meth:`receive` does)."""
        self.counters["received." + msgs.TYPE_NAMES[msgs.TRANSPORT_DATA]] += packets
        self._set_endpoint(peer, source)
        peer.rx_bytes += nbytes
        peer.rx_packets += packets
        self._authenticated_received(peer, now)
        out: list[Datagram] = []
        cur = peer.current
        timers = self.timers
        if (cur is not None and cur.initiator and not peer.sent_last_minute_handshake
                and now - cur.created >= timers.receive_rekey_age):
            peer.sent_last_minute_handshake = True
            self.events.emit("timer.rekey", peer.label, reason="keys near REJECT_AFTER_TIME while receiving")
            out.extend(self._initiate(peer, now, retry=False))
        if data_packets:
            if peer.t_keepalive is None:
                peer.t_keepalive = now + timers.keepalive_timeout
                if data_packets > 1:
                    peer.need_another_keepalive = True
            else:
                peer.need_another_keepalive = True
        return out

    def _flush_staged(self, peer: Peer, now: float, out: list[Datagram]) -> None:
        kp = peer.current
        while peer.staged and kp is not None and self._usable(peer, kp, now):
            self._encrypt(peer, kp, peer.staged.popleft(), now, out)

    def _cookie(self, peer: Peer, now: float) -> bytes | None:
        if peer.cookie is not None and now - peer.cookie_time < COOKIE_REFRESH_TIME:
            return peer.cookie
        return None

    def initiate(self, peer: Peer, now: float | None = None) -> list[Datagram]:
        """Start a handshake with ``peer`` now (a client does this when it comes up)."""
        return self._initiate(peer, self.clock() if now is None else now, retry=False)

    def _initiate(self, peer: Peer, now: float, retry: bool) -> list[Datagram]:
        if not retry:
            peer.handshake_attempts = 0
        # Never more than one initiation per REKEY_TIMEOUT (paper 6.1).
        if now - peer.last_initiation_sent < self.timers.rekey_timeout:
            return []
        if peer.endpoint is None:
            self._drop("no-endpoint", "cannot start a handshake: the peer's endpoint is unknown", peer)
            return []
        peer.last_initiation_sent = now
        if peer.handshake is not None:
            self._forget(peer.handshake.local_index)
        idx = self._new_index(peer, None)
        stamp = tai64n.encode(self.wallclock())
        e = KeyPair()
        self._log_secrets(peer, e)
        try:
            msg, state = hs.create_initiation(self.suite, self.static, peer.public_key, peer.psk, idx, stamp, e)
        except hs.HandshakeError as e:
            self._forget(idx)
            self._drop(e.reason, e.detail, peer)
            return []
        self._index[idx] = (peer, state)
        peer.handshake = state
        packed, mac1, mac2 = add_macs(self.suite, msg.to_bytes(), peer.mac_keys, self._cookie(peer, now))
        peer.last_mac1 = mac1
        peer.t_retransmit = now + self.timers.rekey_timeout + self.jitter(self.timers.max_jitter)
        self._authenticated_sent(peer, now)
        self.counters["handshake_initiations_sent"] += 1
        self.events.emit("handshake.initiation.sent", peer.label, sender_index=idx,
                         ephemeral=_b64(msg.ephemeral), timestamp=tai64n.decode(stamp),
                         encrypted_static=msg.encrypted_static.hex(),
                         encrypted_timestamp=msg.encrypted_timestamp.hex(),
                         mac1=mac1.hex(), mac2=mac2.hex(), attempt=peer.handshake_attempts + 1,
                         to=f"{peer.endpoint[0]}:{peer.endpoint[1]}")
        return [(packed, peer.endpoint)]

    def _log_secrets(self, peer: Peer, ephemeral: KeyPair) -> None:
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
    def _authenticated_sent(self, peer: Peer, now: float) -> None:
        peer.t_keepalive = None  # anything we send counts as a keepalive
        peer.need_another_keepalive = False
        if peer.persistent_keepalive:
            peer.t_persistent = now + peer.persistent_keepalive

    def _authenticated_received(self, peer: Peer, now: float) -> None:
        peer.t_new_handshake = None  # the peer is alive
        if peer.persistent_keepalive:
            peer.t_persistent = now + peer.persistent_keepalive

    def _session_derived(self, peer: Peer, now: float) -> None:
        peer.t_zero_keys = now + 3 * self.timers.reject_after_time
        peer.sent_last_minute_handshake = False

    def _handshake_complete(self, peer: Peer) -> None:
        peer.t_retransmit = None
        peer.handshake_attempts = 0

    def _zero_keys(self, peer: Peer) -> None:
        for kp in peer.keypairs():
            self._forget(kp.local_index)
        if peer.handshake is not None:
            self._forget(peer.handshake.local_index)
        peer.current = peer.previous = peer.next = None
        peer.handshake = None
        peer.t_zero_keys = None

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work to do (monotonic seconds), or None."""
        best = None
        for peer in self.peers.values():
            for t in peer.deadlines():
                if best is None or t < best:
                    best = t
        return best

    def tick(self, now: float | None = None) -> list[Datagram]:
        """Run every timer that has expired; returns what must be sent."""
        if now is None:
            now = self.clock()
        out: list[Datagram] = []
        timers = self.timers
        for peer in list(self.peers.values()):
            if peer.t_retransmit is not None and now >= peer.t_retransmit:
                peer.t_retransmit = None
                if peer.handshake_attempts + 1 >= timers.max_handshake_attempts:
                    dropped = len(peer.staged)
                    peer.staged.clear()
                    peer.t_keepalive = None
                    if dropped:
                        self.counters["dropped.handshake-timeout"] += dropped
                    if peer.t_zero_keys is None:
                        peer.t_zero_keys = now + 3 * timers.reject_after_time
                    self.counters["handshake_timeouts"] += 1
                    self.events.emit("handshake.timeout", peer.label, attempts=peer.handshake_attempts + 1,
                                     seconds=timers.rekey_attempt_time, dropped_packets=dropped)
                else:
                    peer.handshake_attempts += 1
                    self.events.emit("timer.retransmit", peer.label, attempt=peer.handshake_attempts + 1)
                    out.extend(self._initiate(peer, now, retry=True))
            if peer.t_keepalive is not None and now >= peer.t_keepalive:
                peer.t_keepalive = None
                again = peer.need_another_keepalive
                self.events.emit("timer.keepalive", peer.label, mode="passive")
                out.extend(self.send(peer, b"", now))
                if again:
                    peer.t_keepalive = now + timers.keepalive_timeout
            if peer.t_new_handshake is not None and now >= peer.t_new_handshake:
                peer.t_new_handshake = None
                self.events.emit("timer.rekey", peer.label,
                                 reason="sent data but received nothing for KEEPALIVE + REKEY_TIMEOUT")
                out.extend(self._initiate(peer, now, retry=False))
            if peer.t_zero_keys is not None and now >= peer.t_zero_keys:
                self._zero_keys(peer)
                self.events.emit("session.zeroed", peer.label)
            if peer.t_persistent is not None and now >= peer.t_persistent:
                peer.t_persistent = None
                if peer.persistent_keepalive:
                    self.events.emit("timer.keepalive", peer.label, mode="persistent")
                    out.extend(self.send(peer, b"", now))
        return out

    # ------------------------------------------------------------ status
    def status(self) -> dict:
        return {
            "name": self.name,
            "public_key": _b64(self.static.public),
            "suite": self.suite.name,
            "peers": [p.status() for p in self.peers.values()],
            "counters": dict(self.counters),
        }


def _src(packet: bytes) -> str:
    return str(ipaddress.ip_address(_ip.source_address(packet)))
