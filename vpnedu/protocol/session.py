"""A session: one pair of transport keys and their counters (paper, section 5.4.6).

After a handshake each side holds a :class:`TransportSession`: a key to encrypt what it
sends, a key to decrypt what it receives, the next counter to send (the AEAD
nonce, never reused under one key) and a :class:`~.replay.ReplayWindow` for
what it receives.  A peer keeps up to three sessions at once -- previous,
current and next -- so that packets in flight during a rekey still decrypt.
(WireGuard's paper and wireguard-go call this state a *keypair*; here that word is kept for
the X25519 pairs of :class:`~.keys.X25519KeyPair`, the static and ephemeral keys.)
"""

from __future__ import annotations

from .handshake import SessionKeys
from .replay import ReplayWindow
from .suites import CipherSuite


class TransportSession:
    """Transport state derived from one handshake."""

    __slots__ = ("suite", "sender", "receiver", "local_index", "remote_index", "initiator",
                 "created", "send_counter", "replay", "_keys")

    def __init__(self, suite: CipherSuite, keys: SessionKeys, created: float):
        self.suite = suite
        self.sender = suite.transport_aead(keys.send_key)
        self.receiver = suite.transport_aead(keys.recv_key)
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.initiator = keys.initiator
        self.created = created
        self.send_counter = 0
        self.replay = ReplayWindow()
        self._keys = keys  # kept for key logging (Wireshark) and teaching displays

    @property
    def keys(self) -> SessionKeys:
        return self._keys

    def age(self, now: float) -> float:
        return now - self.created

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return (f"TransportSession({role}, local_index={self.local_index:#010x}, "
                f"remote_index={self.remote_index:#010x}, sent={self.send_counter})")
